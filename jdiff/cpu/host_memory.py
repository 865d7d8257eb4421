"""Host memory: glibc's malloc told to keep the memory XLA:CPU frees, for the next call.

XLA:CPU allocates a program's buffers (activations, gradients, the new train state) with
malloc on every call and frees them at its end. With glibc's defaults that memory goes back to
the kernel: chunks above the mmap threshold are unmapped, and the worker threads' arenas are
unmapped or trimmed once empty. So every call touches hundreds of MB of fresh pages again, and
each first touch is a page fault the kernel serves by zeroing a page. On the Ho et al. CIFAR-10
net's train step (batch 8, 2 CPU cores, 2026-12-07) that is 176k page faults and 0.33-0.41 s
of kernel time per ~2 s step. `keep()` sets glibc's mallopt so that freed memory stays in the
process:

  M_ARENA_MAX = 1           one arena (the heap) for every thread
  M_TRIM_THRESHOLD = -1     the heap's free top is never handed back (mallopt(3): -1 disables
                            trimming; a threshold of 2**31-1 still trimmed once more than 2 GiB
                            were free, as after each batch-32 Ho train step: 626k faults a step)
  M_MMAP_MAX = 0            large chunks come from the heap too, not from mmap

Without M_ARENA_MAX, or without M_MMAP_MAX, the faults stayed as they were; and all must be set
before jax starts its backend: the worker threads take their arenas when they first allocate, and
a later M_ARENA_MAX does not move them. Set once the backend had started, the Ho net's batch-32
train step still faulted ~990k pages a step and took 5.8-6.6 s against 5.0-5.7 s with no faults
(measured 2026-12-08). So compute.start() keeps the memory before the backend starts, while
which backend it is cannot be known yet, and `release()`s it at once when the backend turns out
not to be the CPU. Measured on the Ho net's train step (2026-12-07): no page faults in most
steps, 0.90-0.93 of the time a step, peak RSS 2.8 GB instead of 2.2 GB. That is the price: the
process keeps its peak heap until it exits, which a training or sampling process needs again at
its next step anyway (docs/performance.md, "Host memory kept between steps";
tests/test_host_memory.py counts the faults).

config.cpu.host_memory: 'keep' (default) | 'release' (glibc's defaults). Like all of config.cpu
it applies on the CPU backend only (jdiff/compute.py): on GPU and TPU a program's buffers live on
the device. Where the C library is not glibc (macOS, musl) there is nothing to set.
"""

import ctypes
import ctypes.util
import os
from typing import Optional

from absl import logging

# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_TRIM_THRESHOLD, -1), (_M_MMAP_MAX, 0))
# glibc's defaults (malloc.c: DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX; arenas 8 per core on
# 64-bit systems), for release().
_DEFAULTS = ((_M_TRIM_THRESHOLD, 128 * 1024), (_M_MMAP_MAX, 65536),
             (_M_ARENA_MAX, 8 * (os.cpu_count() or 1)))


def _glibc() -> Optional[ctypes.CDLL]:
  name = ctypes.util.find_library("c")
  if name is None:
    return None
  libc = ctypes.CDLL(name)
  return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep() -> bool:
  """Sets mallopt so freed memory stays in the process (module docstring); call it before jax
  starts its backend (compute.start). Returns whether glibc took every setting (False
  elsewhere)."""
  libc = _glibc()
  if libc is None:
    return False
  taken = all(libc.mallopt(parameter, value) == 1 for parameter, value in _SETTINGS)
  if not taken:
    logging.warning("glibc refused a mallopt setting of %s; host memory is handed back as usual",
                    _SETTINGS)
  return taken


def release() -> bool:
  """Hands freed memory back again, as glibc does by default (for a process that kept it before
  its backend was known and then found it is not the CPU). Threads that took the one arena
  meanwhile keep it; later threads get arenas of their own. Returns whether glibc took it."""
  libc = _glibc()
  if libc is None:
    return False
  return all(libc.mallopt(parameter, value) == 1 for parameter, value in _DEFAULTS)
