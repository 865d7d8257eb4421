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
a later M_ARENA_MAX does not move them. jdiff's `--mode` runs call `keep()` first
(config.host_memory='auto', the default); the notebooks call `host_memory.apply("auto")` before
their first jax computation. Called later it changes nothing, silently. Measured on that train
step (2026-12-07): no page faults in most steps, 0.90-0.93 of the time a step, peak RSS 2.8 GB
instead of 2.2 GB. That is the price: the process keeps its peak heap until it exits, which a
training or sampling process needs again at its next step anyway (docs/performance.md, "Host
memory kept between steps"; tests/test_host_memory.py counts the faults).

config.host_memory: 'auto' keeps it unless a jax accelerator plugin (CUDA, ROCm, TPU) is
installed and JAX_PLATFORMS does not put the CPU first: there the programs' buffers live on the
device, and one malloc arena for every thread of the host's input pipeline is a cost not
measured here. 'keep' always, 'release' never (glibc's defaults). Where the C library is not
glibc (macOS, musl) there is nothing to set.
"""

import ctypes
import ctypes.util
import os
import pkgutil
from typing import Optional

from absl import logging

from jdiff import choices

HOST_MEMORY = choices.HOST_MEMORY

# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_TRIM_THRESHOLD, -1), (_M_MMAP_MAX, 0))


def _glibc() -> Optional[ctypes.CDLL]:
  name = ctypes.util.find_library("c")
  if name is None:
    return None
  libc = ctypes.CDLL(name)
  return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep() -> bool:
  """Sets mallopt so freed memory stays in the process (module docstring); call it before jax
  starts its backend. Returns whether glibc took every setting (False elsewhere)."""
  libc = _glibc()
  if libc is None:
    return False
  taken = all(libc.mallopt(parameter, value) == 1 for parameter, value in _SETTINGS)
  if not taken:
    logging.warning("glibc refused a mallopt setting of %s; host memory is handed back as usual",
                    _SETTINGS)
  return taken


def accelerator_plugin() -> Optional[str]:
  """The module name of an installed jax accelerator plugin (CUDA, ROCm, TPU), or None."""
  for module in pkgutil.iter_modules():
    if module.name.startswith(("jax_cuda", "jax_rocm", "libtpu")):
      return module.name
  return None


def apply(setting: str) -> bool:
  """config.host_memory (module docstring): whether keep() was called and glibc took it."""
  if setting not in HOST_MEMORY:
    raise ValueError(f"host_memory={setting!r}: must be one of {HOST_MEMORY}")
  if setting == "auto":
    cpu_first = os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu"
    plugin = None if cpu_first else accelerator_plugin()
    if plugin is not None:
      logging.info("host_memory=auto: %s is installed, glibc's malloc defaults kept", plugin)
      return False
    setting = "keep"
  return keep() if setting == "keep" else False
