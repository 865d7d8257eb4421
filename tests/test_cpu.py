"""jdiff.cpu's CpuCompute: which kernels XLA:CPU compiles jdiff's convolutions to, run-once
compiles, the settings' checks; and compute.for_backend's choice."""

import re

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import builders
from jdiff import config_lib
from jdiff import compute
from jdiff import cpu

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's kernels")


def _conv_then_dot(x, kernel, weights):
  h = lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return h.reshape(-1, h.shape[-1]) @ weights


def _conv_dot_and_sum(x, kernel, weights):
  return _conv_then_dot(x, kernel, weights), jnp.sum(jnp.square(x), axis=(1, 2))


def _compiled_entry(name):
  # Channels enough that XLA hands the convolution to YNNPACK by default (16 are not).
  x, kernel, weights = jnp.ones((2, 8, 8, 64)), jnp.ones((3, 3, 64, 64)), jnp.ones((64, 64))
  text = cpu.CpuCompute(name).jit(_conv_dot_and_sum).lower(x, kernel, weights).compile().as_text()
  return text[text.index("ENTRY"):]


def test_eigen_takes_convolutions_off_ynnpack_and_keeps_products_and_reductions_on_it():
  eigen, ynn = _compiled_entry("eigen"), _compiled_entry("ynn")
  # eigen: a plain XLA convolution (Eigen's kernel); the dot and the sum in YNNPACK fusions.
  assert re.search(r"= f32\[2,8,8,64\]\S* convolution\(", eigen)
  assert eigen.count('"__ynn_fusion"') == 2
  assert not re.search(r"= f32\[2,64\]\S* fusion\(.*kind=kLoop", eigen)  # not XLA's own loop
  # ynn (XLA's default): all three in YNNPACK fusions, no bare convolution.
  assert not re.search(r"\S+ convolution\(", ynn)
  assert ynn.count('"__ynn_fusion"') == 3


def test_both_kernels_compute_the_same_convolution():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 16)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 16, 16)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((16, 16)), jnp.float32)
  outputs = {}
  for name in cpu.choices.CPU_CONVOLUTIONS:
    outputs[name] = np.asarray(cpu.CpuCompute(name).jit(_conv_then_dot)(x, kernel, weights))
  np.testing.assert_allclose(outputs["eigen"], outputs["ynn"], rtol=1e-5, atol=1e-4)


def test_the_default_and_the_setting():
  eigen_options = {"xla_cpu_experimental_ynn_fusion_type":
                   "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
  default = cpu.CpuCompute()
  assert default.kernels() == "winograd"  # Eigen's options, Winograd in the model
  assert default.compiler_options() == eigen_options
  assert cpu.CpuCompute("eigen").kernels() == "eigen"
  assert cpu.CpuCompute("eigen").compiler_options() == eigen_options
  assert cpu.CpuCompute("ynn").kernels() == "ynn" and cpu.CpuCompute("ynn").compiler_options() is None
  with pytest.raises(ValueError, match=r"cpu.convolutions='mkl': must be one of "
                                       r"\('winograd', 'eigen', 'ynn'\)"):
    cpu.CpuCompute("mkl")
  with pytest.raises(ValueError, match=r"cpu.host_memory='auto': must be one of "
                                       r"\('keep', 'release'\)"):
    cpu.CpuCompute(host_memory="auto")
  # Counting the network's FLOPs: Winograd's programs count fewer, so Eigen's count.
  assert default.flop_counting() == cpu.CpuCompute("eigen")
  assert cpu.CpuCompute("ynn").flop_counting() == cpu.CpuCompute("ynn")


def test_for_backend_chooses_by_the_backend_and_reads_config_cpu():
  config = config_lib.default_config()
  config.cpu.convolutions, config.cpu.filter_grad, config.cpu.host_memory = "ynn", "xla", "release"
  assert compute.for_backend(config, backend="cpu") == cpu.CpuCompute("ynn", "xla", "release")
  assert compute.for_backend(backend="cpu") == cpu.CpuCompute()
  for accelerator in ("gpu", "tpu", "cuda", "rocm"):
    chosen = compute.for_backend(config, backend=accelerator)
    assert type(chosen) is compute.Compute  # pylint: disable=unidiomatic-typecheck
  # This process runs on the CPU (the test suite's backend): the CPU's Compute.
  assert compute.for_backend(config) == cpu.CpuCompute("ynn", "xla", "release")


def test_config_refuses_unknown_cpu_settings():
  for field, value in (("convolutions", "mkl"), ("filter_grad", "fast"), ("host_memory", "auto")):
    config = config_lib.default_config()
    config.cpu[field] = value
    with pytest.raises(config_lib.ConfigError, match=f"cpu.{field}"):
      config_lib.validate(config)


def test_a_jaxlib_that_refuses_the_option_compiles_on_its_defaults(monkeypatch):
  monkeypatch.setattr(cpu, "_EIGEN_CONVOLUTIONS", {"xla_cpu_no_such_option": True})
  cpu._options_supported.cache_clear()  # pylint: disable=protected-access
  try:
    default = cpu.CpuCompute()
    assert default.kernels() == "ynn" and default.compiler_options() is None
    np.testing.assert_array_equal(default.jit(lambda x: x * 2)(jnp.arange(3.0)), [0, 2, 4])
  finally:
    cpu._options_supported.cache_clear()  # pylint: disable=protected-access


def test_run_once_turns_llvm_optimisation_off_and_keeps_the_parameters():
  eigen = {"xla_cpu_experimental_ynn_fusion_type":
           "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
  assert cpu.CpuCompute().compiler_options(run_once=True) == dict(
      eigen, xla_backend_optimization_level=0)
  assert cpu.CpuCompute("ynn").compiler_options(run_once=True) == {
      "xla_backend_optimization_level": 0}
  # An option XLA does not know fails the compile: proof that run_once's options reach it.
  with pytest.raises(Exception, match="xla_cpu_no_such_option"):
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(cpu, "_UNOPTIMISED", {"xla_cpu_no_such_option": 0})
      cpu.CpuCompute().jit(lambda x: x + 1, run_once=True)(1.0)
  # The U-Net's initial parameters: bitwise those of the optimised program.
  config = config_lib.load_config("configs/quickstart.py:tiny")
  model = builders.build_model(config)
  optimised = cpu.CpuCompute().jit(lambda: builders.init_params(model, config, jax.random.key(3)))()
  once = builders.new_params(model, config, 3)
  assert jax.tree.structure(once) == jax.tree.structure(optimised)
  for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(optimised)):
    np.testing.assert_array_equal(a, b)


def test_cpu_compute_has_every_method_of_compute():
  """CpuCompute stands in for compute.Compute wherever one is handed (no shared base class:
  jdiff/compute.py imports jdiff/cpu, not the other way round)."""
  public = [name for name in dir(compute.Compute) if not name.startswith("_")]
  assert set(public) >= {"jit", "convolution", "clip_by_global_norm", "flop_counting"}
  for name in public:
    assert callable(getattr(cpu.CpuCompute(), name)), name
