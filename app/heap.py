"""Give the C heap's free pages back to the system after model work (glibc's ``malloc_trim``).

Why: an encode allocates and frees hundreds of MiB of activations. glibc keeps freed memory in its
arenas (only the top of a heap is returned by ``free``), so after each encode the server's RSS
stays at its high-water mark, and the pages freed in the middle of a heap stay resident until a
later encode reuses them. ``malloc_trim(0)`` returns every whole free page (``MADV_DONTNEED``) of
every arena; it takes a few ms and did not slow encodes measurably here (docs/reliability.md).
On a libc without it, nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim() -> bool:
    """Return free heap pages to the system; True if glibc released any."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
