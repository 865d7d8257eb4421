"""jdiff's tuning for the CPU backend, in one place: `CpuCompute` (jdiff/compute.py chooses it
when, and only when, the process's backend is the CPU; config.cpu sets it).

Convolution kernels (`config.cpu.convolutions`). jax 0.10's XLA:CPU hands convolutions and
matrix products to YNNPACK by default. On the Ho et al. U-Net its convolutions are the slower
choice: XLA's Eigen convolutions run the forward pass 1.1-1.3x, the input gradient up to 1.25x
and the filter (weight) gradients 1.4-3.4x faster (fp32, batch 8, one call at a time on 2 CPU
cores; docs/results/bench_depth_ho_cpu/conv_by_resolution.json, 2026-12-02; docs/performance.md),
and the Ho net's forward up to 1.3x (measured 2026-12-02).

  "winograd" (default): as "eigen", and the large 3x3 stride-1 convolutions (those
          convolutions.winograd_applies to) computed as Winograd F(2x2, 3x3): transforms and
          matrix products on YNNPACK, 2.25x fewer multiply-adds (cpu/convolutions.py; the Ho
          net's train step 0.79-0.86 of eigen's time, measured 2026-12-07). Small convolutions
          stay on Eigen.
  "eigen": convolutions on Eigen, matrix products and reductions still on YNNPACK
          (compiler option xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce);
  "ynn":  XLA:CPU's own default (YNNPACK for all three).

Winograd changes the program, not the network: XLA's FLOP count of a program with Winograd
convolutions is that of the program run (fewer multiply-adds); benches that report GFLOP/s of the
network count them with CpuCompute(convolutions="eigen") (tools/bench_torch.py,
tools/bench_depth.py). Should a jaxlib drop the option, programs compile without it (logged
once) rather than fail.

Filter gradients (`config.cpu.filter_grad`): auto | matmul | xla. XLA:CPU's own filter-gradient
convolution is ~250x slower inside a loop or a branch than at a program's top level (measured,
[8, 32, 32, 128] -> 128, Eigen or YNNPACK: 7.8 s inside lax.switch or lax.scan against 29 ms
outside), so 'auto' takes the matrix products of cpu/convolutions.py where the train step
differentiates inside one (a traced depth under depth.dispatch=switch; IWDiff's accumulating
scan), for DiffWave's dilated 1-D convolutions (configs/sc09_cpu.py on Eigen: 0.39 s against 0.49
s a step, docs/results/audio_cpu/bench_train_step.json) and under convolutions=ynn; XLA's own
elsewhere.

Clipping: `clip_by_global_norm` takes the gradients' global norm as `grad_norm=` when the train
step has it, and clips by one scalar multiply (see its docstring; measured on XLA:CPU).

Host memory (`config.cpu.host_memory`, cpu/host_memory.py): glibc's malloc keeps the memory
XLA:CPU frees for the next step; set by compute.start() before the backend starts.

Programs that run once (`jit(..., run_once=True)`, parameter init above all) compile with
XLA:CPU's LLVM optimisation off (xla_backend_optimization_level=0). Flax's initialisers are a
threefry draw per parameter, and optimising that code is most of the compile: jitted U-Net inits
compile in 2.4-3.2 s instead of 7.6-9.1 s (quickstart and its tiny variant) and 7.0 s instead of
9.4 s (Ho net, whose init then runs 1.8 s instead of 0.2 s), with bitwise the same parameters
(measured on 2 CPU cores, 2026-12-06).

Everything is fixed when a CpuCompute is made: a model built with its `convolution(...)` traces
to the same program whenever it is traced; nothing is read from a global while tracing.
"""

import dataclasses
import functools
from typing import Callable, Optional

import jax
from jax import lax
import jax.numpy as jnp
import optax
from absl import logging

from jdiff import choices
from jdiff.cpu import convolutions as convolutions_lib

# YNNPACK fusions kept for "eigen": XLA's default set less convolutions, i.e. matrix products and
# reductions (the enum names as the compiler option takes them; XLA_FLAGS spells them
# individual_dot,reduce). Without REDUCE the reductions (GroupNorm statistics and gradients,
# bias gradients) fall back to XLA's own loop fusions: the Ho net's gradient took ~10% longer
# (measured 2026-12-07).
_EIGEN_CONVOLUTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                       "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
# LLVM's optimisation off: for programs that run once (parameter init), where it costs more than
# it saves.
_UNOPTIMISED = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def _options_supported() -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=_EIGEN_CONVOLUTIONS).lower(1.0).compile()
    return True
  except Exception as e:  # pylint: disable=broad-except  (jaxlib raises its own error types)
    logging.warning("this jaxlib refuses %s (%s); CPU convolutions stay on XLA's default",
                    _EIGEN_CONVOLUTIONS, str(e).splitlines()[0])
    return False


def _check(field: str, value: str, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"cpu.{field}={value!r}: must be one of {allowed}")


@dataclasses.dataclass(frozen=True)
class CpuCompute:
  """The CPU backend's Compute (module docstring): config.cpu's three fields. It has
  jdiff/compute.py's Compute's methods (jdiff/compute.py imports this module, not the other
  way round)."""
  convolutions: str = "winograd"  # choices.CPU_CONVOLUTIONS
  filter_grad: str = "auto"       # choices.FILTER_GRADS
  host_memory: str = "keep"       # choices.HOST_MEMORY

  def __post_init__(self):
    _check("convolutions", self.convolutions, choices.CPU_CONVOLUTIONS)
    _check("filter_grad", self.filter_grad, choices.FILTER_GRADS)
    _check("host_memory", self.host_memory, choices.HOST_MEMORY)

  @classmethod
  def from_config(cls, config=None) -> "CpuCompute":
    """config.cpu's settings (the defaults when config is None)."""
    if config is None:
      return cls()
    return cls(convolutions=config.cpu.convolutions, filter_grad=config.cpu.filter_grad,
               host_memory=config.cpu.host_memory)

  def kernels(self) -> str:
    """The kernels convolutions compile to: self.convolutions, or 'ynn' where this jaxlib
    refuses Eigen's option."""
    return self.convolutions if _options_supported() else "ynn"

  def compiler_options(self, run_once: bool = False) -> Optional[dict]:
    """The XLA:CPU options programs compile with (None: XLA's defaults)."""
    options = dict(_EIGEN_CONVOLUTIONS) if self.kernels() in ("winograd", "eigen") else {}
    if run_once:
      options.update(_UNOPTIMISED)
    return options or None

  def jit(self, fun=None, *, run_once: bool = False, **jit_kwargs):
    """jax.jit with compiler_options(run_once); a decorator too."""
    if fun is None:
      return functools.partial(self.jit, run_once=run_once, **jit_kwargs)
    return jax.jit(fun, compiler_options=self.compiler_options(run_once), **jit_kwargs)

  def convolution(self, *, gradient_in_loop: bool = False,
                  one_dimensional: bool = False) -> Callable:
    """Winograd (convolutions=winograd) over the filter gradient filter_grad settles to (module
    docstring)."""
    kernels = self.kernels()
    filter_grad = self.filter_grad
    if filter_grad == "auto":
      matmul_wins = gradient_in_loop or one_dimensional or kernels == "ynn"
      filter_grad = "matmul" if matmul_wins else "xla"
    if kernels == "winograd":
      return (convolutions_lib.winograd_or_matmul if filter_grad == "matmul"
              else convolutions_lib.winograd_or_xla)
    return (convolutions_lib.conv_general_dilated if filter_grad == "matmul"
            else lax.conv_general_dilated)

  def clip_by_global_norm(self, max_norm: float) -> optax.GradientTransformationExtraArgs:
    """optax.clip_by_global_norm, with the same (empty) state, that takes the gradients' global
    norm as `grad_norm=` when the caller has it: the train step computes it anyway (for its
    non-finite guard and its metrics), and computing it again streams every gradient through
    memory once more (the Ho net's optimizer and EMA update: 67 ms instead of 75 ms on 2 CPU
    cores, measured 2026-12-07).

    Clipping multiplies by one scalar, min(1, max_norm / norm), where optax selects between t
    and t / norm * max_norm per element: XLA:CPU fuses a multiply by a scalar into each of Adam's
    loops, where optax's division made it write a divided copy of every gradient first (one more
    pass over 35.7M floats: the update 59.7 ms against 51.6, median of 40 interleaved rounds,
    measured 2026-12-07). The result is optax's bit for bit where it does not clip and within an
    ulp or two where it does."""

    def update_fn(updates, state, params=None, *, grad_norm=None, **extra_args):
      del params, extra_args
      if grad_norm is None:
        grad_norm = optax.tree.norm(updates)
      scale = jnp.where(grad_norm < max_norm, 1.0, max_norm / grad_norm)
      return jax.tree.map(lambda t: t * scale.astype(t.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)

  def flop_counting(self) -> "CpuCompute":
    """Winograd's programs count fewer multiply-adds than the network has: Eigen's do not."""
    return dataclasses.replace(self, convolutions="eigen") if self.kernels() == "winograd" else self

  @property
  def keeps_host_memory(self) -> bool:
    """Whether glibc keeps freed memory for the next step (compute.start; cpu/host_memory.py)."""
    return self.host_memory == "keep"
