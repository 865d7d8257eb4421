"""U-Net building blocks (Ho et al. 2020), NHWC.

`dtype` is the compute dtype (float32 or bfloat16); parameters are always float32 (flax's
default param_dtype), so optimizer state and gradients are float32 too. Under bfloat16, the
numerically sensitive parts stay float32: GroupNorm statistics and normalisation (flax promotes
them to float32 and casts only the result), attention logits and softmax, and the
squeeze-excitation average.
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


# Ho et al. initialise with variance_scaling(scale, 'fan_avg', 'uniform'); the last conv of a
# residual branch starts at (almost) zero so every block starts as the identity.
def default_init(scale: float = 1.0):
  return nn.initializers.variance_scaling(max(scale, 1e-10), "fan_avg", "uniform")


def timestep_embedding(timesteps: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding of real-valued steps (FastDPM feeds continuous steps)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def group_norm(num_groups: int = 32, dtype=jnp.float32, name=None):
  return nn.GroupNorm(num_groups=num_groups, epsilon=1e-6, dtype=dtype, name=name)


def _bicubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
  """[out, in] weights of PyTorch's bicubic interpolation (align_corners=False, antialias=False):
  source position (i + 0.5) in / out - 0.5, Keys' cubic kernel with a = -0.75 on the 4 nearest
  samples, indices past the border clamped to it."""
  def kernel(x):
    x = np.abs(x)
    return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))
  source = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
  left = np.floor(source).astype(np.int64)
  matrix = np.zeros((out_size, in_size))
  for tap in range(-1, 3):
    index = np.clip(left + tap, 0, in_size - 1)
    np.add.at(matrix, (np.arange(out_size), index), kernel(source - (left + tap)))
  return matrix


def resize_bicubic(x: jax.Array, height: int, width: int) -> jax.Array:
  """NHWC bicubic resize as torch.nn.functional.interpolate(mode="bicubic") does it (no
  antialiasing when shrinking; jax.image.resize's "cubic" uses a = -0.5 and antialiases)."""
  rows = jnp.asarray(_bicubic_matrix(x.shape[1], height), x.dtype)
  cols = jnp.asarray(_bicubic_matrix(x.shape[2], width), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


class Conv3x3(nn.Module):
  """3x3 conv with the model's `convolution` (lax.conv_general_dilated's signature; what
  jdiff/compute.py hands the model for its backend)."""
  features: int
  init_scale: float = 1.0
  strides: int = 1
  dtype: Any = jnp.float32
  convolution: Callable = lax.conv_general_dilated

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.features, (3, 3), strides=(self.strides, self.strides), padding="SAME",
                   kernel_init=default_init(self.init_scale), dtype=self.dtype,
                   conv_general_dilated=self.convolution)(x)


class Dense(nn.Module):
  features: int
  init_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features, kernel_init=default_init(self.init_scale), dtype=self.dtype)(x)


class ResBlock(nn.Module):
  """GN-swish-conv, + dense(temb), GN-swish-dropout-conv(zero init), 1x1 shortcut if needed."""
  out_ch: int
  dropout: float = 0.0
  num_groups: int = 32
  dtype: Any = jnp.float32
  convolution: Callable = lax.conv_general_dilated

  @nn.compact
  def __call__(self, x, temb, train: bool):
    h = nn.swish(group_norm(self.num_groups, self.dtype)(x))
    h = Conv3x3(self.out_ch, dtype=self.dtype, convolution=self.convolution)(h)
    h = h + Dense(self.out_ch, dtype=self.dtype)(nn.swish(temb))[:, None, None, :]
    h = nn.swish(group_norm(self.num_groups, self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = Conv3x3(self.out_ch, init_scale=0.0, dtype=self.dtype,
                convolution=self.convolution)(h)
    if x.shape[-1] != self.out_ch:
      x = Dense(self.out_ch, dtype=self.dtype, name="shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all pixels, residual."""
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    h = group_norm(self.num_groups, self.dtype)(x)
    q = Dense(channels, dtype=self.dtype, name="q")(h).reshape(batch, height * width, channels)
    k = Dense(channels, dtype=self.dtype, name="k")(h).reshape(batch, height * width, channels)
    v = Dense(channels, dtype=self.dtype, name="v")(h).reshape(batch, height * width, channels)
    # Logits accumulate and stay in float32 (also under bfloat16 compute): softmax is sensitive.
    logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * (channels ** -0.5), axis=-1).astype(v.dtype)
    h = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(batch, height, width, channels)
    return x + Dense(channels, init_scale=0.0, dtype=self.dtype, name="proj_out")(h)


class Downsample(nn.Module):
  dtype: Any = jnp.float32
  convolution: Callable = lax.conv_general_dilated

  @nn.compact
  def __call__(self, x):
    return Conv3x3(x.shape[-1], strides=2, dtype=self.dtype,
                   convolution=self.convolution)(x)


class Upsample(nn.Module):
  dtype: Any = jnp.float32
  convolution: Callable = lax.conv_general_dilated

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    x = jax.image.resize(x, (batch, height * 2, width * 2, channels), "nearest")
    return Conv3x3(channels, dtype=self.dtype, convolution=self.convolution)(x)


class SqueezeExcitation(nn.Module):
  """Channel gates from the global average: dense(reduce)-swish-dense-sigmoid (Hu et al.)."""
  reduced_ch: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    s = nn.swish(Dense(self.reduced_ch, dtype=self.dtype, name="reduce")(s))
    return x * nn.sigmoid(Dense(x.shape[-1], dtype=self.dtype, name="expand")(s))


class MBConvBlock(nn.Module):
  """MBConv with squeeze-excitation (MobileNetV2 / CoAtNet) for the U-Net.

  GN-swish-1x1 expand (input channels x expansion, as MobileNetV2), + dense(temb) as in ResBlock, GN-swish-depthwise 3x3,
  GN-swish-SE (input channels x se_ratio, as EfficientNet), dropout, 1x1 projection (zero init), 1x1 shortcut if needed.
  """
  out_ch: int
  dropout: float = 0.0
  num_groups: int = 32
  expansion: int = 4
  se_ratio: float = 0.25
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool):
    hidden_ch = x.shape[-1] * self.expansion
    h = nn.swish(group_norm(self.num_groups, self.dtype)(x))
    h = Dense(hidden_ch, dtype=self.dtype, name="expand")(h)
    h = h + Dense(hidden_ch, dtype=self.dtype, name="temb")(nn.swish(temb))[:, None, None, :]
    h = nn.swish(group_norm(self.num_groups, self.dtype)(h))
    h = nn.Conv(hidden_ch, (3, 3), padding="SAME", feature_group_count=hidden_ch,
                kernel_init=default_init(), dtype=self.dtype, name="depthwise")(h)
    h = nn.swish(group_norm(self.num_groups, self.dtype)(h))
    h = SqueezeExcitation(max(1, int(x.shape[-1] * self.se_ratio)), dtype=self.dtype, name="se")(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = Dense(self.out_ch, init_scale=0.0, dtype=self.dtype, name="project")(h)
    if x.shape[-1] != self.out_ch:
      x = Dense(self.out_ch, dtype=self.dtype, name="shortcut")(x)
    return x + h
