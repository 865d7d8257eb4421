"""The adaptive U-Net's skip types (Giladi et al., section 3): what the first active
expansive block gets from below, and the PyTorch-style bicubic resize of the interpolate path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.models import layers
from jdiff.models.unet import UNet

CH = 8


def _unet(skip_type):
  return UNet(ch=CH, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
              out_ch=1, num_groups=4, skip_type=skip_type)


def _missing_input(skip_type, h_end, level):
  temb = jnp.zeros((h_end.shape[0], 4 * CH))
  return _unet(skip_type).apply({}, h_end, level, temb, False, method=UNet._missing_input)


def test_zero_skip_gives_zeros_and_duplicate_skip_gives_the_contracting_tensor():
  """Level 1 (16 channels) expects 16 channels from level 2: zero -> zeros; duplicate -> the
  contracting-path tensor itself. Level 0 (8 channels) expects 16: duplicate tiles it twice."""
  h_end = jax.random.normal(jax.random.key(0), (2, 4, 4, 2 * CH))
  np.testing.assert_array_equal(_missing_input("zero", h_end, 1), np.zeros((2, 4, 4, 2 * CH)))
  np.testing.assert_array_equal(_missing_input("duplicate", h_end, 1), h_end)
  h_top = jax.random.normal(jax.random.key(1), (2, 8, 8, CH))
  np.testing.assert_array_equal(_missing_input("duplicate", h_top, 0),
                                np.concatenate([h_top, h_top], axis=-1))
  assert float(jnp.max(jnp.abs(_missing_input("zero", h_top, 0)))) == 0.0


def test_interpolate_path_learns_layers_only_where_channel_counts_differ():
  """ch_mult (1, 2, 2): the middle block has 16 channels. From level 0 (8 channels) the path needs
  a 1x1 conv in; from level 1 (16) none; going out, 16 -> 16 needs none."""
  model = _unet("interpolate")
  x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,))
  params = model.init(jax.random.key(0), x, t, method=UNet.init_all_depths)["params"]
  interp = sorted(name for name in params if name.startswith("interp"))
  assert interp == ["interp_in_0"]


def test_bicubic_resize_is_pytorch_s():
  """Hand-computed as PyTorch's upsample_bicubic2d does it (Keys' kernel with A = -0.75, source
  (i + 0.5) in / out - 0.5, indices clamped at the borders): [1, 2] to 4 is
  [1.10546875 - 0.10546875 * 2, 0.7734375 + 0.2265625 * 2, ...]; shrinking [x0..x3] to 2 is
  [0.5 x0 + 0.59375 x1 - 0.09375 x2, -0.09375 x1 + 0.59375 x2 + 0.5 x3] (no antialiasing)."""
  up = layers.resize_bicubic(jnp.array([1.0, 2.0]).reshape(1, 1, 2, 1), 1, 4)
  np.testing.assert_allclose(up.ravel(), [0.89453125, 1.2265625, 1.7734375, 2.10546875],
                             rtol=1e-6)
  x = np.array([1.0, -2.0, 4.0, 3.0])
  down = layers.resize_bicubic(jnp.asarray(x).reshape(1, 4, 1, 1), 2, 1)
  np.testing.assert_allclose(down.ravel(), [0.5 * x[0] + 0.59375 * x[1] - 0.09375 * x[2],
                                            -0.09375 * x[1] + 0.59375 * x[2] + 0.5 * x[3]],
                             rtol=1e-6)
  # jax.image.resize's cubic (a = -0.5, antialiased when shrinking) is a different resize.
  assert not np.allclose(down.ravel(), jax.image.resize(jnp.asarray(x), (2,), "cubic"))


@pytest.mark.parametrize("skip_type", ["zero", "duplicate", "interpolate"])
def test_every_skip_type_runs_at_every_depth(skip_type):
  model = _unet(skip_type)
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
  t = jnp.array([3.0, 17.0])
  params = model.init(jax.random.key(0), x, t, method=UNet.init_all_depths)
  for depth in range(3):
    out = model.apply(params, x, t, shortcut_depth=depth)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
