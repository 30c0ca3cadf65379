"""The compute worker: all TensorFlow work runs in a separate process, the viewer's process never imports it.

- `messages`: the typed requests and events both ways, and `JobState`;
- `arrays`: large arrays cross as memory-mapped ``.npy`` files, never through the pipe;
- `client`: starts the worker on first use, queues jobs, stops them (request, then terminate), notices
  a dead worker; it is Qt-free and TensorFlow-free;
- `worker`: the worker process's request loop (``python -m napari_unet.jobs.worker``);
- `handlers`: what each request does, with the core (TensorFlow is imported here only).
"""
