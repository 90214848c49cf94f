"""Host-memory allocator settings for training on CPU.

A training step allocates and frees the same large buffers every step (activations, logits, gradients).
glibc serves blocks above its mmap threshold with fresh ``mmap`` calls and gives them back with ``munmap``
on free, so every step page-faults and zeroes those pages again: on this project's 2-core machines that is
15% of a glm-base CPU step (bench/bench_train.py ``--allocator system`` vs ``reuse``). ``reuse`` tells glibc
to serve every block from its heap and to keep freed heap memory (``M_MMAP_MAX = 0``, a 2 GiB
``M_TRIM_THRESHOLD``): after the first step the same pages are reused. The process keeps its peak heap size
until it exits, which is what a training job does anyway (tcmalloc and jemalloc, often preloaded for
CPU training, behave alike). Fork-started DataLoader workers inherit the setting.

Only glibc has ``mallopt``; elsewhere (macOS, musl) ``reuse`` is a logged no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

ALLOCATORS = ("reuse", "system")
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
REUSE_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt's int takes: up to 2 GiB of free heap kept


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def set_host_allocator(mode: str) -> bool:
    """Apply ``mode`` to this process's malloc: ``reuse`` (see the module docstring) or ``system`` (leave
    the C library's defaults alone). Returns True when glibc took the ``reuse`` setting."""
    if mode not in ALLOCATORS:
        raise ValueError(f"allocator must be one of {list(ALLOCATORS)}, got {mode!r}")
    if mode == "system":
        return False
    libc = _glibc()
    if libc is None:
        log.info("allocator=reuse: not a glibc system, the C library's defaults stay")
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, REUSE_TRIM_THRESHOLD) == 1
    if not ok:
        log.warning("allocator=reuse: glibc refused mallopt; its defaults stay")
    return ok
