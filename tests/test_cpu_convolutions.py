"""jdiff.cpu.convolutions: XLA's forward and input gradient, the filter gradient as matrix
products, Winograd; and which convolution CpuCompute hands a model."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import config_lib
from jdiff import builders
from jdiff import compute
from jdiff import cpu
from jdiff.cpu import convolutions as conv


def _gradients(conv_fn, x, kernel, dy, **kwargs):
  def apply(x, kernel):
    return conv_fn(x, kernel, **kwargs)
  y, vjp = jax.vjp(apply, x, kernel)
  return (y,) + vjp(dy)


CASES = [  # (input shape, kernel shape, strides, padding, rhs_dilation)
    ((2, 9, 9, 3), (3, 3, 3, 5), (1, 1), "SAME", None),
    ((2, 8, 8, 4), (3, 3, 4, 4), (2, 2), "SAME", None),       # Downsample
    ((2, 7, 6, 2), (3, 2, 2, 3), (1, 2), "VALID", None),
    ((2, 8, 8, 2), (3, 3, 2, 2), (1, 1), ((2, 0), (1, 3)), None),
    ((3, 40, 4), (3, 4, 6), (1,), "SAME", (4,)),              # DiffWave's dilated 1-D conv
    ((3, 17, 2), (2, 2, 3), (3,), "VALID", (2,)),
]


@pytest.mark.parametrize("x_shape,kernel_shape,strides,padding,dilation", CASES)
def test_matmul_filter_gradient_equals_xla(x_shape, kernel_shape, strides, padding, dilation):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32)
  numbers = ("NHWC", "HWIO", "NHWC") if len(x_shape) == 4 else ("NWC", "WIO", "NWC")
  kwargs = dict(window_strides=strides, padding=padding, rhs_dilation=dilation,
                dimension_numbers=numbers)
  y_ref = lax.conv_general_dilated(x, kernel, **kwargs)
  dy = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
  expected = _gradients(lax.conv_general_dilated, x, kernel, dy, **kwargs)
  got = _gradients(conv.conv_general_dilated, x, kernel, dy, **kwargs)
  for name, want, have in zip(("y", "dx", "dkernel"), expected, got):
    assert have.shape == want.shape and have.dtype == want.dtype, name
    np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5, err_msg=name)
  # The forward pass and the input gradient are XLA's own programs: bit for bit.
  np.testing.assert_array_equal(got[0], expected[0])
  np.testing.assert_array_equal(got[1], expected[1])


def test_filter_gradient_against_a_numpy_correlation():
  """An oracle without lax: dW[i, j] = sum over b, h, w of x_pad[b, h + i, w + j] dy[b, h, w]."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 5, 2))
  kernel = rng.standard_normal((3, 3, 2, 3))
  dy = rng.standard_normal((2, 5, 5, 3))
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros_like(kernel)
  for i in range(3):
    for j in range(3):
      want[i, j] = np.einsum("bhwc,bhwd->cd", padded[:, i:i + 5, j:j + 5], dy)
  _, _, got = _gradients(conv.conv_general_dilated, jnp.asarray(x, jnp.float32),
                         jnp.asarray(kernel, jnp.float32), jnp.asarray(dy, jnp.float32),
                         window_strides=(1, 1), padding="SAME",
                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_gradients_keep_the_kernel_dtype():
  x = jnp.ones((1, 4, 4, 2), jnp.bfloat16)
  kernel = jnp.ones((3, 3, 2, 2), jnp.bfloat16)
  dy = jnp.ones((1, 4, 4, 2), jnp.bfloat16)
  _, dx, dkernel = _gradients(conv.conv_general_dilated, x, kernel, dy, window_strides=(1, 1),
                              padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert dx.dtype == dkernel.dtype == jnp.bfloat16
  # Centre tap sees all 16 positions x 1 x 1; a corner tap 9 of them.
  assert float(dkernel[1, 1, 0, 0]) == 16.0 and float(dkernel[0, 0, 0, 0]) == 9.0


def test_grouped_convolutions_fall_back_to_lax():
  x = jnp.ones((1, 4, 4, 4))
  kernel = jnp.ones((3, 3, 1, 4))
  kwargs = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=4)
  np.testing.assert_array_equal(conv.conv_general_dilated(x, kernel, **kwargs),
                                lax.conv_general_dilated(x, kernel, **kwargs))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda k: conv.conv_general_dilated(x, k, **kwargs).sum()))(
      kernel))
  assert "custom_vjp" not in jaxpr


@pytest.mark.parametrize("kernels", cpu.choices.CPU_CONVOLUTIONS)
def test_filter_grad_choice(kernels):
  winograd = kernels == "winograd"
  xla = conv.winograd_or_xla if winograd else lax.conv_general_dilated
  matmul = conv.winograd_or_matmul if winograd else conv.conv_general_dilated
  choose = lambda filter_grad, **use: cpu.CpuCompute(kernels, filter_grad).convolution(**use)
  assert choose("xla") is xla and choose("xla", gradient_in_loop=True) is xla
  assert choose("matmul") is matmul
  # auto: the matrix products where XLA:CPU's convolutions are YNNPACK's, where the gradient is
  # taken inside a loop or branch, and for 1-D (DiffWave) convolutions.
  assert choose("auto") is (matmul if kernels == "ynn" else xla)
  assert choose("auto", gradient_in_loop=True) is matmul
  assert choose("auto", one_dimensional=True) is matmul
  with pytest.raises(ValueError, match=r"cpu.filter_grad='fast': must be one of \('auto'"):
    cpu.CpuCompute(kernels, "fast")
  # Off the CPU: lax's own, whatever the use.
  plain = compute.Compute()
  assert plain.convolution(gradient_in_loop=True, one_dimensional=True) is lax.conv_general_dilated


def _direct_correlation(x, kernel):
  """An oracle without lax: y[b, h, w] = sum over i, j of x_pad[b, h + i, w + j] @ kernel[i, j]."""
  _, height, width, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(np.einsum("bhwc,cd->bhwd", padded[:, i:i + height, j:j + width], kernel[i, j])
             for i in range(3) for j in range(3))


@pytest.mark.parametrize("x_shape,channels_out", [((2, 6, 4, 5), 7), ((1, 2, 2, 3), 2),
                                                  ((3, 8, 10, 4), 4)])
def test_winograd_is_the_direct_convolution(x_shape, channels_out):
  """Output, input gradient and filter gradient of Winograd F(2x2, 3x3) against a numpy
  correlation and lax's convolution: a changed transform coefficient fails all three."""
  rng = np.random.default_rng(2)
  x = rng.standard_normal(x_shape)
  kernel = rng.standard_normal((3, 3, x_shape[-1], channels_out))
  np.testing.assert_allclose(conv.winograd_conv3x3(jnp.asarray(x, jnp.float32),
                                                   jnp.asarray(kernel, jnp.float32)),
                             _direct_correlation(x, kernel), rtol=1e-5, atol=1e-5)
  x, kernel = jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32)
  kwargs = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  dy = jnp.asarray(rng.standard_normal(x_shape[:-1] + (channels_out,)), jnp.float32)
  expected = _gradients(lax.conv_general_dilated, x, kernel, dy, **kwargs)
  got = _gradients(lambda x, kernel, **_: conv.winograd_conv3x3(x, kernel), x, kernel, dy)
  for name, want, have in zip(("y", "dx", "dkernel"), expected, got):
    assert have.shape == want.shape and have.dtype == want.dtype, name
    np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5, err_msg=name)


def _dots(jaxpr):
  """(lhs shape, rhs shape) of every dot_general in jaxpr and the jaxprs nested in it."""
  shapes = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      shapes.append((eqn.invars[0].aval.shape, eqn.invars[1].aval.shape))
    for param in eqn.params.values():
      for inner in param if isinstance(param, (list, tuple)) else (param,):
        if isinstance(inner, jax.extend.core.ClosedJaxpr):
          shapes += _dots(inner.jaxpr)
        elif isinstance(inner, jax.extend.core.Jaxpr):
          shapes += _dots(inner)
  return shapes


def test_winograd_is_sixteen_products_of_tiles():
  """What makes it cheaper: no convolution, 16 products of transformed [tiles, C_in] blocks (2x2
  outputs per tile) with the 16 transformed [C_in, C_out] filters: 16 separate ones when not
  differentiated, one batched product and its two transposes (the gradients) under autodiff."""
  x, kernel = jnp.ones((2, 8, 6, 5)), jnp.ones((3, 3, 5, 7))
  forward = jax.make_jaxpr(conv.winograd_conv3x3)(x, kernel).jaxpr
  assert "conv_general_dilated" not in str(forward)
  assert _dots(forward) == [((2, 4, 3, 5), (5, 7))] * 16
  gradient = jax.make_jaxpr(jax.grad(lambda x, kernel: conv.winograd_conv3x3(x, kernel).sum(),
                                     argnums=(0, 1)))(x, kernel).jaxpr
  assert "conv_general_dilated" not in str(gradient)
  dots = _dots(gradient)
  assert sorted(dots) == sorted([((16, 2 * 4 * 3, 5), (16, 5, 7)),     # forward
                                 ((16, 2 * 4 * 3, 5), (16, 2 * 4 * 3, 7)),  # filter gradient
                                 ((16, 2 * 4 * 3, 7), (16, 5, 7))])  # input gradient


def test_winograd_input_gradient_is_computed_apart_whatever_the_probe():
  """The input gradient sits behind a lax.cond whose two branches are the same function (a
  fusion boundary, conv._computed_apart): the NaN probe that flips its predicate gives what a
  finite one gives, fn(operand); under vmap over the operand it stays a cond (one branch run)."""
  def fn(operand):
    return jnp.cumsum(operand) * 2.0
  operand = jnp.asarray([[1.5, 2.0], [-3.0, 0.25]], jnp.float32)
  for first in (1.5, np.nan):
    probe = jnp.asarray([first, 1.0], jnp.float32)
    np.testing.assert_array_equal(conv._computed_apart(fn, operand, probe), fn(operand))
  vmapped = jax.make_jaxpr(jax.vmap(lambda d: conv._computed_apart(fn, d, jnp.ones(2))))(operand)
  assert [eqn.primitive.name for eqn in vmapped.jaxpr.eqns].count("cond") == 1
  gradient = jax.make_jaxpr(jax.grad(
      lambda x: conv.winograd_conv3x3(x, jnp.ones((3, 3, 5, 7))).sum()))(jnp.ones((2, 8, 6, 5)))
  assert [eqn.primitive.name for eqn in gradient.jaxpr.eqns].count("cond") == 1


def test_winograd_applies_only_to_the_large_3x3_stride_1_same_convolutions():
  numbers = ("NHWC", "HWIO", "NHWC")
  x, kernel = jnp.zeros((8, 16, 16, 128)), jnp.zeros((3, 3, 128, 128))  # 512 tiles
  assert conv.winograd_applies(x, kernel, (1, 1), "SAME", dimension_numbers=numbers)
  assert conv.winograd_applies(jnp.zeros((4, 16, 16, 128)), kernel, (1, 1), "SAME",  # 256 tiles
                               dimension_numbers=numbers)
  assert conv.winograd_applies(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers)
  refused = {
      "stride 2": (x, kernel, (2, 2), "SAME", {}),
      "VALID": (x, kernel, (1, 1), "VALID", {}),
      "dilated": (x, kernel, (1, 1), "SAME", {"rhs_dilation": (2, 2)}),
      "grouped": (x, jnp.zeros((3, 3, 64, 128)), (1, 1), "SAME", {"feature_group_count": 2}),
      "odd height": (jnp.zeros((8, 15, 16, 128)), kernel, (1, 1), "SAME", {}),
      "127 channels in": (jnp.zeros((8, 16, 16, 127)), jnp.zeros((3, 3, 127, 128)), (1, 1),
                          "SAME", {}),
      "64 channels out": (x, jnp.zeros((3, 3, 128, 64)), (1, 1), "SAME", {}),
      "192 tiles": (jnp.zeros((3, 16, 16, 128)), kernel, (1, 1), "SAME", {}),
      "bfloat16": (x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 1), "SAME", {}),
      "5x5": (x, jnp.zeros((5, 5, 128, 128)), (1, 1), "SAME", {}),
  }
  for why, (lhs, rhs, strides, padding, kwargs) in refused.items():
    assert not conv.winograd_applies(lhs, rhs, strides, padding, dimension_numbers=numbers,
                                     **kwargs), why
  assert not conv.winograd_applies(x, kernel, (1, 1), "SAME",
                                   dimension_numbers=("NCHW", "OIHW", "NCHW"))
  # Where it does not apply the wrapper is the other convolution, bit for bit.
  rng = np.random.default_rng(3)
  small = jnp.asarray(rng.standard_normal((2, 8, 8, 16)), jnp.float32)
  small_kernel = jnp.asarray(rng.standard_normal((3, 3, 16, 16)), jnp.float32)
  args = (small, small_kernel, (1, 1), "SAME")
  np.testing.assert_array_equal(conv.winograd_or_xla(*args, dimension_numbers=numbers),
                                lax.conv_general_dilated(*args, dimension_numbers=numbers))
  big = jnp.asarray(rng.standard_normal((8, 16, 16, 128)), jnp.float32)
  big_kernel = jnp.asarray(rng.standard_normal((3, 3, 128, 128)) / 30, jnp.float32)
  jaxpr = str(jax.make_jaxpr(lambda a, b: conv.winograd_or_xla(
      a, b, (1, 1), "SAME", dimension_numbers=numbers))(big, big_kernel))
  assert "conv_general_dilated" not in jaxpr
  np.testing.assert_allclose(
      conv.winograd_or_xla(big, big_kernel, (1, 1), "SAME", dimension_numbers=numbers),
      lax.conv_general_dilated(big, big_kernel, (1, 1), "SAME", dimension_numbers=numbers),
      rtol=1e-4, atol=1e-4)


def test_unet_gradients_do_not_depend_on_the_filter_grad_choice():
  """The whole U-Net (3x3 convs, strided downsampling, the output conv): same loss, gradients
  equal to float rounding; the field is compute-only, so a checkpoint resumes across it."""
  config = config_lib.load_config("configs/quickstart.py:tiny")
  grads = {}
  for choice in ("xla", "matmul"):
    config.cpu.filter_grad = choice
    model = builders.build_model(config, compute.for_backend(config, backend="cpu"))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2,) + builders.image_shape(config)),
                    jnp.float32)
    t = jnp.asarray([3.0, 50.0])
    # Random weights everywhere (only the init's shapes are used): the zero-initialised output
    # conv would make most gradients ~0.
    leaves, treedef = jax.tree.flatten(jax.eval_shape(
        lambda: model.init(jax.random.key(0), x, t, method=model.init_all_depths)["params"]))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(treedef, [0.2 * jax.random.normal(k, leaf.shape)
                                          for k, leaf in zip(keys, leaves)])
    loss = lambda p: jnp.sum(model.apply({"params": p}, x, t) ** 2 + 0.1 * model.apply(
        {"params": p}, x, t, shortcut_depth=1))
    grads[choice] = jax.jit(jax.grad(loss))(params)  # one compile, not op by op
  flat_xla = jax.tree_util.tree_flatten_with_path(grads["xla"])[0]
  flat_matmul = jax.tree.leaves(grads["matmul"])
  assert len(flat_xla) == len(flat_matmul)
  scale = max(float(jnp.max(jnp.abs(leaf))) for _, leaf in flat_xla)
  conv_kernels = 0
  for (path, want), have in zip(flat_xla, flat_matmul):
    if "Conv_0" in jax.tree_util.keystr(path) and want.ndim == 4:
      conv_kernels += 1
      assert float(jnp.max(jnp.abs(want))) > 1e-3 * scale  # a gradient worth comparing
    np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-6 * scale)
  assert conv_kernels >= 10
  identity = config_lib.checkpoint_identity(config, "train")
  assert not any(field.startswith("cpu.") for field in identity)


def test_unet_under_winograd_computes_the_same_loss_and_gradients():
  """cpu.convolutions=winograd on a U-Net whose first level qualifies (128 channels, 8x8, batch
  32: 512 tiles): its 3x3 convolutions leave the program, the loss and gradients stay."""
  config = config_lib.load_config("configs/quickstart.py:tiny")
  config.model.ch, config.model.ch_mult, config.model.num_res_blocks = 128, (1, 1), 1
  config.model.attn_resolutions = ()
  model = builders.build_model(config, compute.Compute())  # only its shapes are used here
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((32,) + builders.image_shape(config)), jnp.float32)
  t = jnp.asarray(rng.integers(0, config.diffusion.num_timesteps, 32), jnp.float32)
  leaves, treedef = jax.tree.flatten(jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, t, method=model.init_all_depths)["params"]))
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [0.05 * jax.random.normal(k, leaf.shape)
                                        for k, leaf in zip(keys, leaves)])
  results, convolutions = {}, {}
  for setting in ("eigen", "winograd"):
    setting_compute = cpu.CpuCompute(convolutions=setting)
    setting_model = builders.build_model(config, setting_compute)

    def loss(p, setting_model=setting_model):
      return jnp.mean(setting_model.apply({"params": p}, x, t) ** 2)
    convolutions[setting] = str(jax.make_jaxpr(loss)(params)).count("conv_general_dilated")
    results[setting] = setting_compute.jit(jax.value_and_grad(loss))(params)
  # Level 0's 3x3 convolutions with 128+ channels in and out: the down res block's 2, the two up
  # res blocks' 4, the upsampling's 1. conv_in (1 channel in), conv_out (1 out), the strided
  # downsampling and level 1 (4x4: 128 tiles) stay convolutions.
  assert convolutions["winograd"] == convolutions["eigen"] - 7
  (loss_eigen, grads_eigen), (loss_winograd, grads_winograd) = results["eigen"], results["winograd"]
  np.testing.assert_allclose(loss_winograd, loss_eigen, rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(grads_eigen))
  for want, have in zip(jax.tree.leaves(grads_eigen), jax.tree.leaves(grads_winograd)):
    np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("depth_training,dispatch,loss,accumulate,in_loop", [
    ("full", "host", "simple", False, False),
    ("random", "host", "simple", False, False),
    ("random", "switch", "simple", False, True),   # the gradient inside lax.switch
    ("full", "switch", "simple", False, False),    # full depth: no switch in the step
    ("full", "host", "iwdiff", True, True),        # IWDiff's scan over draws
    ("full", "host", "iwdiff", False, False),
])
def test_the_model_gets_the_convolution_for_its_gradient_s_place(
    depth_training, dispatch, loss, accumulate, in_loop):
  """builders.gradient_in_loop tells the CPU's Compute where the gradient is taken; with
  cpu.filter_grad=auto that is the matrix products inside control flow (eigen kernels: XLA's
  own elsewhere), and an explicit choice is kept."""
  config = config_lib.load_config("configs/quickstart.py:tiny")
  config.depth.training, config.depth.dispatch = depth_training, dispatch
  config.training.loss, config.training.iwdiff_accumulate = loss, accumulate
  config.cpu.convolutions = "eigen"
  assert builders.gradient_in_loop(config) == in_loop
  cpu_compute = compute.for_backend(config, backend="cpu")
  model = builders.build_model(config, cpu_compute)
  assert model.convolution is (conv.conv_general_dilated if in_loop else lax.conv_general_dilated)
  config.cpu.filter_grad = "xla"
  model = builders.build_model(config, compute.for_backend(config, backend="cpu"))
  assert model.convolution is lax.conv_general_dilated
  # Any other backend: lax's own.
  assert (builders.build_model(config, compute.for_backend(config, backend="gpu")).convolution
          is lax.conv_general_dilated)


def test_diffwave_on_the_cpu_gets_the_matrix_products():
  config = config_lib.load_config("configs/sc09_cpu.py:tiny")
  model = builders.build_model(config, compute.for_backend(config, backend="cpu"))
  assert model.convolution is conv.winograd_or_matmul  # Winograd never applies to 1-D ones
