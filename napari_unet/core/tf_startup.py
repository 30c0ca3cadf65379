"""TensorFlow start-up for the command line: quiet (unless --verbose) and without Keras's optional imports.

Keras imports scikit-learn, pandas and matplotlib when they are installed (for wrappers, data
frames and plots napari-unet never uses): about 0.9 s of a 2.7 s import. They are hidden while
Keras imports (each guards the import with ``except ImportError``) and importable again afterwards.

TensorFlow 2.21 logs through absl's C++ logger, which writes everything before
``absl::InitializeLog()`` to stderr and ignores ``TF_CPP_MIN_LOG_LEVEL`` for those lines (the oneDNN
and "Could not find cuda drivers" notices, the cuInit error on machines without a GPU). So the
environment variables are set before TensorFlow is imported, and the import itself and the first
device query run with the process's stderr (file descriptor 2) redirected to a file; afterwards
every captured line that is not a native log line is written back, so real errors still show.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: absl/TensorFlow native log lines ("I0000 00:00:1796... port.cc:153] ...") and their preamble.
_NATIVE = re.compile(
    r"^([IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\]|WARNING: All log messages before absl::InitializeLog"
    r"|To enable the following instructions: )"
)

_QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # C++ INFO, WARNING and ERROR of the TensorFlow logger
    "ABSL_MIN_LOG_LEVEL": "3",
    "GRPC_VERBOSITY": "ERROR",
}


def quiet_environment() -> None:
    """Set the variables TensorFlow reads at import (a value the user set is kept)."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("tensorflow", "absl", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Deprecation and user warnings raised inside TensorFlow/Keras are theirs to fix, not the user's.
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|absl|tf2onnx|google)(\.|$)")


#: Optional imports of Keras that the CLI does not need.
_SKIPPED = ("sklearn", "pandas", "matplotlib")


def start_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and Keras and initialise the devices; native log lines dropped unless `verbose`."""
    if "keras" in sys.modules:
        return
    if verbose:
        with _optional_imports_skipped():
            import keras  # noqa: F401
        return
    quiet_environment()
    with _captured_stderr() as captured, _optional_imports_skipped():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe (cuInit) logs here
        import keras  # noqa: F401

    kept = [line for line in captured.splitlines(keepends=True) if line.strip() and not _NATIVE.match(line)]
    if kept:
        sys.stderr.write("".join(kept))
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)


@contextmanager
def _optional_imports_skipped() -> Iterator[None]:
    hidden = [name for name in _SKIPPED if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


class _captured_stderr:
    """Point file descriptor 2 at a temporary file; its text is in `.text` (and `str(self)`) afterwards."""

    def __enter__(self) -> "_captured_stderr":
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        self.text = ""
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        if exc[0] is not None and self.text:  # the import failed: show everything it said
            sys.stderr.write(self.text)
            self.text = ""

    def splitlines(self, keepends: bool = False) -> list[str]:
        return self.text.splitlines(keepends)
