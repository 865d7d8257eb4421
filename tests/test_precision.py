"""Mixed precision (bf16 compute, fp32 params) and rematerialisation of the U-Net blocks.

Remat must not change anything but memory: outputs equal, gradients equal to float32 rounding
(XLA fuses and orders the recomputed graph differently). bf16 must stay close to fp32: bf16 keeps
8 significant bits (unit roundoff 2^-9 = 0.2%), and the rounding of every conv / dense output
compounds over the ~20 layers of even a small U-Net to ~1% relative error of the eps prediction
(measured below ~1.6% on the test model; the bound is 2e-2). Parameters, gradients, optimizer state
and the loss stay float32.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from jdiff import builders
from jdiff import compute
from jdiff import depth as depth_lib
from jdiff import parallel
from jdiff.drivers import train as train_lib
from jdiff.models.unet import UNet
from jdiff.tools import bench_precision

BF16_MAX_RELATIVE_ERROR = 2e-2
MIN_GRAD_COSINE = 0.99
# 8x8 images, levels 8x8 and 4x4 (so shortcut depths 0 and 1), attention at 4x4, dropout on,
# interpolate skip: the depth-1 network routes level 0 through the middle block.
MODEL_KWARGS = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
                    out_ch=2, num_groups=4, skip_type="interpolate")
X = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
T = jnp.array([0.0, 10.0, 100.0, 999.0])
TARGET = jax.random.normal(jax.random.key(2), (4, 8, 8, 2))
DROPOUT_KEY = jax.random.key(3)


def model(block_type, **kwargs):
  return UNet(**MODEL_KWARGS, block_type=block_type, **kwargs)


@functools.lru_cache(maxsize=None)
def perturbed_params(block_type):
  """Initial parameters with the zero-initialised ones (last conv of each residual branch,
  conv_out, biases) and the GroupNorm scales perturbed, so that every path carries signal."""
  @functools.partial(compute.for_backend().jit, run_once=True)
  def init():
    params = model(block_type).init(jax.random.key(0), X, T,
                                    method=UNet.init_all_depths)["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    return treedef.unflatten([
        jnp.where(jnp.std(leaf) < 1e-3, leaf + 0.05 * jax.random.normal(key, leaf.shape), leaf)
        for leaf, key in zip(leaves, keys)])
  return init()


def loss_and_grads_fn(unet):
  """jitted (params, traced depth) -> ((loss, output), grads); lax.switch over the depths."""
  def loss_fn(params, depth):
    out = depth_lib.apply_at_depth(
        lambda x, t, shortcut_depth: unet.apply(
            {"params": params}, x, t, shortcut_depth=shortcut_depth, train=True,
            rngs={"dropout": DROPOUT_KEY}),
        unet.num_levels, depth, X, T)
    return jnp.mean((out - TARGET) ** 2), out
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


_REFERENCE = {}


def reference(block_type):
  """fp32, no-remat (params, {depth: ((loss, output), grads)}), computed once per block type."""
  if block_type not in _REFERENCE:
    params = perturbed_params(block_type)
    fn = loss_and_grads_fn(model(block_type))
    _REFERENCE[block_type] = params, {k: fn(params, jnp.int32(k)) for k in (0, 1)}
  return _REFERENCE[block_type]


def flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def relative_error(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def cosine(a, b):
  return float(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def all_eqns(jaxpr):
  """Equations of a jaxpr and of all the jaxprs nested in it (jit, cond branches, remat, ...)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
          yield from all_eqns(sub)


def primitive_counts(fn, *args):
  return collections.Counter(eqn.primitive.name for eqn in all_eqns(jax.make_jaxpr(fn)(*args)))


# The MBConv variants cost a minute or more each on 2 CPU cores: `-m slow`.
@pytest.mark.parametrize("block_type", ["res", pytest.param("mbconv", marks=pytest.mark.slow)])
def test_remat_equals_no_remat_at_every_depth(block_type):
  params, expected = reference(block_type)
  fn = loss_and_grads_fn(model(block_type, remat=True))
  for depth, ((loss, out), grads) in expected.items():
    (remat_loss, remat_out), remat_grads = fn(params, jnp.int32(depth))
    # Overall and per element: equal up to float32 rounding (XLA fuses the rematerialised graph
    # differently, so sums are reordered).
    print(block_type, depth, "remat relative error: output", relative_error(remat_out, out),
          "grads", relative_error(flat(remat_grads), flat(grads)))
    assert relative_error(remat_out, out) < 1e-6, depth
    np.testing.assert_allclose(remat_out, out, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(out))))
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    assert relative_error(flat(remat_grads), flat(grads)) < 1e-6, depth
    scale = float(jnp.max(jnp.abs(flat(grads))))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale),
                 remat_grads, grads)


def test_remat_inserts_rematerialisation():
  """One remat region per ResBlock / AttnBlock of the network; none without the flag; the
  backward pass recomputes the blocks' forward convolutions and matmuls; and autodiff keeps far
  fewer bytes from the forward pass for the backward (only the blocks' inputs)."""
  params = perturbed_params("res")
  blocks = [name for name in params if "res_" in name or "attn" in name]  # interp_*: depth > 0
  counts = {}
  for remat in (False, True):
    unet = model("res", remat=remat)
    loss = lambda p, unet=unet: jnp.sum(unet.apply({"params": p}, X, T) ** 2)
    counts[remat] = (primitive_counts(loss, params), primitive_counts(jax.grad(loss), params))
  (forward, backward), (remat_forward, remat_backward) = counts[False], counts[True]
  assert forward["remat2"] == backward["remat2"] == 0
  assert remat_forward["remat2"] == remat_backward["remat2"] == len(blocks) == 12, blocks
  recomputed = lambda c: c["conv_general_dilated"] + c["dot_general"]
  assert recomputed(remat_backward) > recomputed(backward)
  saved = {remat: bench_precision.residual_bytes(model("res", remat=remat), params, 64, (8, 8, 1))
           for remat in (False, True)}
  assert saved[True] < 0.3 * saved[False], saved  # measured: 2.9 MB vs 17.4 MB


@pytest.mark.parametrize("block_type", ["res", pytest.param("mbconv", marks=pytest.mark.slow)])
def test_bf16_close_to_fp32_with_fp32_params_and_grads(block_type):
  params, expected = reference(block_type)
  bf16 = model(block_type, dtype=jnp.bfloat16)
  init_params = jax.eval_shape(
      lambda: bf16.init(jax.random.key(0), X, T, method=UNet.init_all_depths)["params"])
  assert {x.dtype for x in jax.tree.leaves(init_params)} == {jnp.dtype(jnp.float32)}
  fn = loss_and_grads_fn(bf16)
  for depth, ((loss, out), grads) in expected.items():
    (bf16_loss, bf16_out), bf16_grads = fn(params, jnp.int32(depth))
    assert bf16_out.dtype == bf16_loss.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(bf16_grads)} == {jnp.dtype(jnp.float32)}
    error = relative_error(bf16_out, out)
    print(block_type, depth, "bf16 relative error: output", error, "loss",
          abs(float(bf16_loss) - float(loss)) / float(loss), "grads",
          relative_error(flat(bf16_grads), flat(grads)), "cosine", cosine(flat(bf16_grads), flat(grads)))
    assert 0 < error < BF16_MAX_RELATIVE_ERROR, (depth, error)  # > 0: bf16 really was used
    assert abs(float(bf16_loss) - float(loss)) < BF16_MAX_RELATIVE_ERROR * float(loss)
    assert cosine(flat(bf16_grads), flat(grads)) > MIN_GRAD_COSINE, depth
    assert relative_error(flat(bf16_grads), flat(grads)) < 5 * BF16_MAX_RELATIVE_ERROR, depth


@pytest.mark.slow  # about 100 s on 2 CPU cores
def test_bf16_computes_in_bf16_and_reduces_in_fp32():
  """Every conv and matmul takes bf16 operands except the float32 output head (conv_out);
  every reduction (GroupNorm statistics, softmax, the SE average) runs on float32."""
  for block_type in ("res", "mbconv"):  # MBConv adds the squeeze-excitation average
    unet = model(block_type, dtype=jnp.bfloat16)
    jaxpr = jax.make_jaxpr(
        lambda p, unet=unet: unet.apply({"params": p}, X, T, shortcut_depth=1))(
            perturbed_params(block_type))
    matmul_dtypes = collections.Counter()
    for eqn in all_eqns(jaxpr):
      name = eqn.primitive.name
      dtypes = tuple(str(v.aval.dtype) for v in eqn.invars)
      if name in ("conv_general_dilated", "dot_general"):
        matmul_dtypes[(name, dtypes)] += 1
      if name.startswith("reduce_") or name in ("argmax", "cumsum"):
        assert dtypes[0] == "float32", (block_type, name, dtypes)
    fp32 = {key: n for key, n in matmul_dtypes.items() if "float32" in key[1]}
    assert fp32 == {("conv_general_dilated", ("float32", "float32")): 1}, matmul_dtypes  # conv_out
    assert sum(matmul_dtypes.values()) > 10
    assert jaxpr.out_avals[0].dtype == jnp.float32
  # Activations saved for the backward pass are bf16 (res: 11.5 MB vs 17.4 MB in fp32).
  params = perturbed_params("res")
  saved = {dtype: bench_precision.residual_bytes(model("res", dtype=dtype), params, 64, (8, 8, 1))
           for dtype in (jnp.float32, jnp.bfloat16)}
  assert saved[jnp.bfloat16] < 0.75 * saved[jnp.float32], saved


def _one_train_step(config):
  mesh = parallel.make_mesh()
  unet = builders.build_model(config)
  optimizer = builders.build_optimizer(config.training)
  state = builders.build_state(config, unet, optimizer, mesh)
  step = train_lib.make_train_step(config, unet, builders.build_diffusion(config), optimizer, mesh)
  images = np.random.default_rng(0).integers(0, 256, (config.training.batch_size, 8, 8, 1),
                                             dtype=np.uint8)
  state, metrics = step(state, jax.device_put(images, parallel.batch_sharding(mesh)))
  return jax.device_get(state), jax.device_get(metrics)


def test_train_step_bf16_remat_keeps_an_fp32_state_and_the_fp32_loss():
  """The real train step, with random shortcut depths (lax.switch over remat'd networks)."""
  config = tiny_config()
  config.depth.training = "random"
  fp32_state, fp32_metrics = _one_train_step(config)
  config.model.dtype = "bfloat16"
  config.model.remat = True
  state, metrics = _one_train_step(config)
  floats = [x for x in jax.tree.leaves((state.params, state.ema_params, state.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}
  assert jax.tree.structure(state) == jax.tree.structure(fp32_state)
  assert bool(metrics["finite"]) and int(metrics["depth"]) == int(fp32_metrics["depth"])
  assert metrics["loss"].dtype == np.float32
  np.testing.assert_allclose(metrics["loss"], fp32_metrics["loss"], rtol=BF16_MAX_RELATIVE_ERROR)
  np.testing.assert_allclose(metrics["grad_norm"], fp32_metrics["grad_norm"], rtol=0.05)


@pytest.mark.slow
def test_precision_bench_writes_every_variant(tmp_path):
  """The bench on the tiny config, each variant in its own subprocess (as on GPU)."""
  config = tiny_config()
  results = bench_precision.run(config, str(tmp_path), isolate=True)
  assert (tmp_path / "bench_precision.json").exists()
  assert list(results["variants"]) == [
      "float32/remat=off", "float32/remat=on", "bfloat16/remat=off", "bfloat16/remat=on"]
  for r in results["variants"].values():
    assert r["images_per_s"] > 0 and r["temp_bytes"] > 0 and r["state_float_dtypes"] == ["float32"]
  variants = results["variants"]
  assert variants["float32/remat=on"]["residual_bytes"] < variants["float32/remat=off"]["residual_bytes"]
