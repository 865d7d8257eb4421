"""How jdiff compiles its programs and which convolution its models run: chosen once, by backend.

A `Compute` is handed to whatever builds programs (builders.build_model and build_optimizer, the
drivers' steps, the evaluation nets):

  jit(fun, **jit_kwargs)         compiles every jdiff program (shardings, donation as jax.jit);
  convolution(...)               the models' convolution (flax's `conv_general_dilated=`);
  clip_by_global_norm(max_norm)  the optimizer's gradient clipping.

`start(config)` makes the process's Compute once, at the start of a run: the CPU's host memory
setting must precede jax's backend (jdiff/cpu/host_memory.py), so it goes in first and is taken
back at once when the backend turns out not to be the CPU.

On GPU and TPU, and on any backend but the CPU, it is this module's `Compute`: plain `jax.jit`,
`lax.conv_general_dilated` and `optax.clip_by_global_norm`. On the CPU backend it is jdiff/cpu's
`CpuCompute`, the one place that holds jdiff's CPU tuning (Winograd convolutions, XLA:CPU's
Eigen options, matrix-product filter gradients, glibc's allocator, unoptimised compiles of
programs that run once), configured by `config.cpu`. `for_backend` decides from
`jax.default_backend()`, the backend the process's programs run on, and from nothing else: not
from which packages are installed. Models and drivers never ask which backend they are on.

Both give the same train state and checkpoints (the clipping's state is empty either way), so a
run may move between a CPU and an accelerator.
"""

import dataclasses
import functools
from typing import Callable, Optional

import jax
from jax import lax
import optax


@dataclasses.dataclass(frozen=True)
class Compute:
  """Plain XLA: what GPU and TPU run (module docstring)."""

  def jit(self, fun=None, *, run_once: bool = False, **jit_kwargs):
    """jax.jit(fun, **jit_kwargs); a decorator too (`@compute.jit`,
    `functools.partial(compute.jit, out_shardings=...)`). run_once: the program runs once (a
    parameter init), which a backend may compile differently."""
    if fun is None:
      return functools.partial(self.jit, run_once=run_once, **jit_kwargs)
    del run_once
    return jax.jit(fun, **jit_kwargs)

  def convolution(self, *, gradient_in_loop: bool = False,
                  one_dimensional: bool = False) -> Callable:
    """The models' convolution, with lax.conv_general_dilated's signature. The arguments say how
    the model uses it, for a backend whose choice depends on that: gradient_in_loop, the train
    step differentiates it inside lax.switch or lax.scan; one_dimensional, the model's
    convolutions are 1-D (DiffWave)."""
    del gradient_in_loop, one_dimensional
    return lax.conv_general_dilated

  def clip_by_global_norm(self, max_norm: float) -> optax.GradientTransformation:
    """Global-norm clipping for the optimizer; its state is optax.EmptyState on every backend."""
    return optax.clip_by_global_norm(max_norm)

  def flop_counting(self) -> "Compute":
    """The Compute whose programs XLA's FLOP count is the network's of: this one, unless it
    computes convolutions by a fast algorithm (fewer multiply-adds than the network has)."""
    return self


def start(config=None, before_backend: Callable[[], None] = lambda: None,
          backend: Optional[str] = None) -> Compute:
  """The process's Compute (for_backend), made before jax's backend starts: with
  config.cpu.host_memory='keep' (the default) glibc keeps freed memory from now on, and gives it
  back again unless the backend is the CPU. before_backend runs after that and before the backend
  starts (jax.distributed.initialize must precede it too). Call it once, first."""
  from jdiff.cpu import host_memory  # pylint: disable=g-import-not-at-top  (ctypes only)
  kept = (config is None or config.cpu.host_memory == "keep") and host_memory.keep()
  before_backend()
  chosen = for_backend(config, backend)
  if kept and not getattr(chosen, "keeps_host_memory", False):
    host_memory.release()
  return chosen


def for_backend(config=None, backend: Optional[str] = None) -> Compute:
  """The Compute of the backend the process runs on (jax.default_backend(), or `backend`):
  jdiff/cpu's CpuCompute with config.cpu's settings (defaults when config is None) on the CPU,
  plain `Compute` elsewhere."""
  if (backend or jax.default_backend()) != "cpu":
    return Compute()
  from jdiff import cpu  # pylint: disable=g-import-not-at-top  (only the CPU backend loads it)
  return cpu.CpuCompute.from_config(config)
