"""Import TensorFlow so that it can share a process with napari's OpenGL (Mesa) without crashing.

Mesa's software and AMD drivers (llvmpipe under Xvfb, VMs, remote desktops; radeonsi) load
`libLLVM-NN.so` with global symbols, and TensorFlow carries its own LLVM. Whichever comes second
binds its LLVM static initialisers to the other's copy and the process segfaults (TensorFlow after a
viewer: at import; TensorFlow first: when the viewer first renders). Importing TensorFlow with
`RTLD_DEEPBIND` (its libraries use their own symbols first) and without `RTLD_GLOBAL` (its symbols
stay out of everyone else's way) avoids both orders. Measured with Mesa llvmpipe under Xvfb and
TensorFlow 2.21: both orders crash with a plain import and work with this one.
"""

from __future__ import annotations

import os
import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()


def import_tensorflow() -> ModuleType:
    """`import tensorflow` with LLVM-safe dlopen flags (a plain import where they do not exist)."""
    with _LOCK:
        if "tensorflow" in sys.modules:
            import tensorflow

            return tensorflow
        deepbind = getattr(os, "RTLD_DEEPBIND", 0)
        if not deepbind or not hasattr(sys, "setdlopenflags"):  # not glibc: no such conflict
            import tensorflow

            return tensorflow
        flags = sys.getdlopenflags()
        real_set = sys.setdlopenflags

        def local_deepbind(new_flags: int) -> None:
            # TensorFlow's pywrap module asks for RTLD_GLOBAL while it loads; keep it local.
            real_set((new_flags & ~os.RTLD_GLOBAL) | deepbind)

        sys.setdlopenflags = local_deepbind
        try:
            local_deepbind(flags)
            import tensorflow
        finally:
            sys.setdlopenflags = real_set
            real_set(flags)
        return tensorflow
