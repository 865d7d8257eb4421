"""Which kernels XLA:CPU runs jdiff's convolutions with; `jit` compiles every jdiff program.

jax 0.10's XLA:CPU hands convolutions and matrix products to YNNPACK by default. On the Ho et
al. U-Net its convolutions are the slower choice: XLA's Eigen convolutions run the forward pass
1.1-1.3x, the input gradient up to 1.25x and the filter (weight) gradients 1.4-3.4x faster
(fp32, batch 8, one call at a time on 2 CPU cores;
docs/results/bench_depth_ho_cpu/conv_by_resolution.json, 2026-12-02; docs/performance.md), and
the Ho net's forward up to 1.3x (measured 2026-12-02). `cpu_convolutions`:

  "winograd" (default): as "eigen", and the large 3x3 stride-1 convolutions (those
          models/conv.winograd_applies to) computed as Winograd F(2x2, 3x3): transforms and
          matrix products on YNNPACK, 2.25x fewer multiply-adds (models/conv.py; the Ho net's
          train step 0.79-0.86 of eigen's time, measured 2026-12-07). Small convolutions stay
          on Eigen.
  "eigen": convolutions on Eigen, matrix products and reductions still on YNNPACK
          (compiler option xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce);
  "ynn":  XLA:CPU's own default (YNNPACK for all three).

Winograd changes the program, not the network: XLA's FLOP count of a program with Winograd
convolutions is that of the program run (fewer multiply-adds); benches that report GFLOP/s of the
network count them under "eigen" (tools/bench_torch.py, tools/bench_depth.py).

It is a process-wide setting (like jax.config): `--mode=...` sets it from the config's
`cpu_convolutions` before it compiles anything; a notebook gets the default or calls
`set_convolutions`. A function jitted before a change keeps the kernels it was jitted with
(model.conv_filter_grad=auto is settled when the model is traced, so trace under the same
setting for the matching weight gradient: models/conv.py). Off
the CPU backend nothing changes. Should a jaxlib drop the option, programs compile without it
(logged once) rather than fail.

`jit(..., run_once=True)` is for programs that run once, parameter initialisation above all:
XLA:CPU's LLVM optimisation is turned off (xla_backend_optimization_level=0). Flax's
initialisers are a threefry draw per parameter, and optimising that code is most of the
compile: jitted U-Net inits compile in 2.4-3.2 s instead of 7.6-9.1 s (quickstart and its tiny
variant) and 7.0 s instead of 9.4 s (Ho net, whose init then runs 1.8 s instead of 0.2 s), with
bitwise the same parameters (measured on 2 CPU cores, 2026-12-06).
"""

import contextlib
import functools
from typing import Iterator, Optional

import jax
from absl import logging

from jdiff import choices

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

CPU_CONVOLUTIONS = choices.CPU_CONVOLUTIONS
_convolutions = "winograd"


def set_convolutions(name: str) -> None:
  """Sets which kernels the CPU programs compiled from now on use (CPU_CONVOLUTIONS)."""
  global _convolutions
  if name not in CPU_CONVOLUTIONS:
    raise ValueError(f"cpu_convolutions={name!r}: must be one of {CPU_CONVOLUTIONS}")
  _convolutions = name


@contextlib.contextmanager
def convolutions_set_to(name: str) -> Iterator[None]:
  """set_convolutions(name) inside the block, the previous setting after it (benches, tests)."""
  previous = _convolutions
  set_convolutions(name)
  try:
    yield
  finally:
    set_convolutions(previous)


def convolutions() -> str:
  """The kernels CPU convolutions compile to: 'winograd', 'eigen' or 'ynn' (off the CPU backend:
  'xla')."""
  if jax.default_backend() != "cpu":
    return "xla"
  return _convolutions if _options_supported() else "ynn"


@functools.lru_cache(maxsize=None)
def _options_supported() -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=_EIGEN_CONVOLUTIONS).lower(1.0).compile()
    return True
  except Exception as e:  # pylint: disable=broad-except  (jaxlib raises its own error types)
    logging.warning("this jaxlib refuses %s (%s); CPU convolutions stay on XLA's default",
                    _EIGEN_CONVOLUTIONS, str(e).splitlines()[0])
    return False


def compiler_options(run_once: bool = False) -> Optional[dict]:
  """The compiler options jdiff's programs compile with now (None: XLA's defaults); run_once:
  those of a program that runs once (module docstring)."""
  options = dict(_EIGEN_CONVOLUTIONS) if convolutions() in ("winograd", "eigen") else {}
  if run_once and jax.default_backend() == "cpu":
    options.update(_UNOPTIMISED)
  return options or None


def jit(fun=None, *, run_once: bool = False, **kwargs):
  """jax.jit with `compiler_options(run_once)`; a decorator too (`@cpu_kernels.jit`,
  `functools.partial(cpu_kernels.jit, out_shardings=...)`)."""
  if fun is None:
    return functools.partial(jit, run_once=run_once, **kwargs)
  return jax.jit(fun, compiler_options=compiler_options(run_once), **kwargs)
