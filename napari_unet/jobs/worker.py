"""The compute worker process: ``python -m napari_unet.jobs.worker ADDRESS`` (started by `client`).

It connects back to the viewer, then runs one request at a time on its main thread while a reader
thread listens for Stop. It exits when the viewer goes away, when asked to, or after an idle period,
so the memory (and GPU) TensorFlow holds is given back.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import traceback
from multiprocessing.connection import Client, Connection

from napari_unet.core.errors import NapariUNetError

from .client import AUTHKEY_ENV, DEFAULT_IDLE_S, IDLE_ENV
from .messages import Event, Failed, Finished, JobMessage, Request, ShutdownRequest, StopRequest

#: Nice value of the worker: the viewer's process wins the cores when it needs them.
WORKER_NICE = 10


class JobControl(threading.Event):
    """A job's stop flag, with the queue of messages the viewer sends to the running job."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: queue.Queue[JobMessage] = queue.Queue()


class Worker:
    def __init__(self, conn: Connection, idle_s: float) -> None:
        self.conn, self.idle_s = conn, idle_s
        self.inbox: queue.Queue[Request | None] = queue.Queue()
        self.stops: dict[str, JobControl] = {}
        self._send_lock = threading.Lock()

    def send(self, event: Event) -> None:
        with self._send_lock:
            self.conn.send(event)

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the viewer is gone: nobody is waiting for results
            if isinstance(message, StopRequest):
                self.stops.setdefault(message.job, JobControl()).set()
            elif isinstance(message, JobMessage):  # sent after its request: a missing job has ended
                control = self.stops.get(message.job)
                if control is not None:
                    control.messages.put(message)
            elif isinstance(message, ShutdownRequest):
                self.inbox.put(None)
            elif isinstance(message, Request):
                self.stops.setdefault(message.job, JobControl())
                self.inbox.put(message)

    def serve(self) -> None:
        threading.Thread(target=self._read, name="napari-unet worker reader", daemon=True).start()
        while True:
            try:
                request = self.inbox.get(timeout=self.idle_s)
            except queue.Empty:
                return  # idle for too long
            if request is None:
                return
            self.run(request)

    def run(self, request: Request) -> None:
        from .dispatch import handle
        from .handlers import stopped_before_start

        stop = self.stops[request.job]
        try:
            if stop.is_set():
                state, result = stopped_before_start(request)
            else:
                state, result = handle(request, self.send, stop)
            self.send(Finished(request.job, state, result))
        except NapariUNetError as exc:
            self.send(Failed(request.job, str(exc), traceback.format_exc(), expected=True))
        except Exception as exc:
            self.send(Failed(request.job, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        finally:
            self.stops.pop(request.job, None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    key = bytes.fromhex(os.environ.pop(AUTHKEY_ENV))
    idle_s = float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))
    try:
        os.nice(WORKER_NICE)
    except OSError:
        pass
    conn = Client(argv[0], authkey=key)
    Worker(conn, idle_s).serve()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
