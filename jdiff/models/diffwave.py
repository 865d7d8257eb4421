"""DiffWave (Kong et al. 2021): a non-causal WaveNet-like eps-predictor for waveforms [B, L, 1].

Layer by layer as the reference code the FastDPM experiments ran (philsyn/DiffWave-unconditional,
WaveNet.py; the vocoder's conditioning as lmnt-com/diffwave, model.py):
  x -> 1x1 conv (1 -> C) -> ReLU                                      `init_conv`
  t -> sinusoidal(128) -> Dense 512 -> swish -> Dense 512 -> swish   `fc_t1`, `fc_t2`
  N residual layers, layer n with dilation 2 ** (n % cycle):
    h = x + Dense_C(temb)[:, None]                                    `fc_t`
    h = dilated conv k=3 (C -> 2C) (+ 1x1 conv of the upsampled mel, 2C, when conditioned)
    out = tanh(h[..., :C]) * sigmoid(h[..., C:])                      gated unit
    x <- (x + 1x1 conv_C(out)) sqrt(1/2);  skip += 1x1 conv_S(out)    `res_conv`, `skip_conv`
  skip sqrt(1/N) -> 1x1 conv (S -> S) -> ReLU -> zero-initialised 1x1 conv (S -> 1)
Every conv but the last is weight-normalised (torch.nn.utils.weight_norm, dim=0: one gain per
output channel), as in the reference; the Dense layers are not. With C = S = 256, N = 36, cycle 12
that is 24,071,681 parameters (24,034,305 without the 37,376 gains).

Initialisation (the trained weights do not depend on it; documented so nobody wonders): the
reference calls kaiming_normal_ on the *computed* weight after weight_norm, which the next
forward pass recomputes from (g, v), so its effective init is PyTorch's default conv init
(uniform, variance 1 / (3 fan_in)) with g = ||v|| ~ sqrt(1/3). We draw v that way and start the
gains at sqrt(1/3); biases start at 0.

Steps are real-valued (the embedding is sin/cos of t * 10000^(-i/63)), so FastDPM's continuous
steps go straight in. Mel conditioning (`n_mels` > 0): a [B, frames, n_mels] spectrogram is
upsampled `mel_hop` x in time by two transposed 2-D convs (LeakyReLU 0.4; lmnt-com/diffwave
SpectrogramUpsampler: kernel 3 x 32, stride 1 x 16 for its hop of 256; a hop of s * s uses stride
s and kernel 2 s), then projected per layer by a 1x1 conv to 2C.
"""

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jdiff import choices
from jdiff.models import layers

REFERENCE_MEL_HOP = 256  # lmnt-com/diffwave's hop at 22.05 kHz (16 x 16)

# PyTorch's default conv init: kaiming_uniform(a=sqrt(5)) = uniform with variance 1 / (3 fan_in).
_TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def gated_unit(h: jax.Array) -> jax.Array:
  """tanh(first half of channels) * sigmoid(second half): WaveNet's gated activation."""
  channels = h.shape[-1] // 2
  return jnp.tanh(h[..., :channels]) * jax.nn.sigmoid(h[..., channels:])


class Conv1x(nn.Module):
  """A 1-D conv over [B, L, C_in] (kernel k, dilation d, 'same' length), optionally weight-normed."""
  features: int
  kernel_size: int = 1
  dilation: int = 1
  weight_norm: bool = True
  zero_init: bool = False
  dtype: Any = jnp.float32
  convolution: Callable = lax.conv_general_dilated  # the backend's (jdiff/compute.py)

  @nn.compact
  def __call__(self, x):
    pad = self.dilation * (self.kernel_size - 1) // 2
    init = nn.initializers.zeros if self.zero_init else _TORCH_CONV_INIT
    conv = nn.Conv(self.features, (self.kernel_size,), kernel_dilation=(self.dilation,),
                   padding=[(pad, pad)], kernel_init=init, dtype=self.dtype, name="conv",
                   conv_general_dilated=self.convolution)
    if self.weight_norm:
      # One gain per output channel: the norm is over (kernel, input channels), as torch's dim=0.
      conv = nn.WeightNorm(conv, scale_init=nn.initializers.constant(math.sqrt(1.0 / 3.0)),
                           feature_axes=-1, name="weight_norm")
    return conv(x)


class MelUpsampler(nn.Module):
  """[B, frames, n_mels] -> [B, frames * hop, n_mels]: two ConvTranspose (3 x 2s, stride 1 x s),
  s = sqrt(hop) (the reference: hop 256, kernel 3 x 32, stride 1 x 16).

  Padding (1, 3s/2 - 1) on (mel, time) gives torch's ConvTranspose2d(padding=[1, s/2]) output
  sizes: n_mels and s times the frames.
  """
  hop: int = REFERENCE_MEL_HOP
  dtype: Any = jnp.float32
  weight_norm: bool = False  # weight-normed transposed convs (philsyn/DiffWave-Vocoder's)

  @nn.compact
  def __call__(self, mel):
    stride = choices.mel_upsampler_stride(self.hop)
    if not stride:
      raise ValueError(f"mel hop {self.hop}: must be s * s with s even (16, 64, 256, ...)")
    time_pad = 2 * stride - 1 - stride // 2  # lax padding of torch's padding s / 2
    x = jnp.swapaxes(mel, 1, 2)[..., None]  # [B, n_mels, frames, 1]
    for i in range(2):
      upsample = nn.ConvTranspose(1, (3, 2 * stride), strides=(1, stride),
                                  padding=((1, 1), (time_pad, time_pad)),
                                  dtype=self.dtype, name=f"upsample_{i}")
      if self.weight_norm:
        upsample = nn.WeightNorm(upsample, feature_axes=-1, name=f"weight_norm_{i}")
      x = nn.leaky_relu(upsample(x), 0.4)
    return jnp.swapaxes(x[..., 0], 1, 2)


class ResidualLayer(nn.Module):
  residual_channels: int
  skip_channels: int
  dilation: int
  weight_norm: bool = True
  dtype: Any = jnp.float32
  convolution: Callable = lax.conv_general_dilated
  step_in_residual: bool = False  # DiffWave.step_in_residual
  own_upsampler_hop: int = 0       # DiffWave.mel_upsampler='per_layer': this layer's upsampler

  @nn.compact
  def __call__(self, x, temb, mel=None):
    c = self.residual_channels
    conv = functools.partial(Conv1x, weight_norm=self.weight_norm, dtype=self.dtype,
                             convolution=self.convolution)
    h = x + nn.Dense(c, dtype=self.dtype, name="fc_t")(temb)[:, None, :]
    if self.step_in_residual:
      x = h
    h = conv(2 * c, 3, self.dilation, name="dilated_conv")(h)
    if mel is not None:
      if self.own_upsampler_hop:
        mel = MelUpsampler(self.own_upsampler_hop, dtype=self.dtype, weight_norm=self.weight_norm,
                           name="mel_upsampler")(mel)
      h = h + conv(2 * c, 1, name="mel_conv")(mel)
    out = gated_unit(h)
    res = conv(c, 1, name="res_conv")(out)
    skip = conv(self.skip_channels, 1, name="skip_conv")(out)
    return (x + res) * math.sqrt(0.5), skip


class DiffWave(nn.Module):
  residual_channels: int = 256
  skip_channels: int = 256
  num_layers: int = 36
  dilation_cycle: int = 12
  embed_dims: tuple = (128, 512, 512)  # sinusoidal -> fc_t1 -> fc_t2
  out_ch: int = 1
  n_mels: int = 0                      # 0: unconditional
  mel_hop: int = REFERENCE_MEL_HOP     # audio samples per mel frame (the upsampler's factor)
  weight_norm: bool = True
  dtype: Any = jnp.float32
  convolution: Callable = lax.conv_general_dilated  # the backend's (jdiff/compute.py)
  # The reference code's residual as it runs: its `h = x; h += fc_t(temb)` adds the step
  # embedding to x in place, so a layer returns (x + fc_t(temb) + res) sqrt(1/2). Its released
  # checkpoints need it (jdiff.tools.import_weights --from=diffwave); jdiff's own training
  # defaults to (x + res) sqrt(1/2), as lmnt-com/diffwave and the paper write it.
  step_in_residual: bool = False
  # shared: one upsampler for all layers (lmnt-com/diffwave); per_layer: each residual layer
  # upsamples the mel itself with weight-normed transposed convs (philsyn/DiffWave-Vocoder, whose
  # checkpoints need it).
  mel_upsampler: str = "shared"

  @property
  def num_levels(self) -> int:
    """One 'depth' only (jdiff's adaptive depth is a U-Net feature)."""
    return 1

  @nn.compact
  def __call__(self, x, t, *, shortcut_depth: int = 0, train: bool = False,
               mel: Optional[jax.Array] = None):
    """x: [B, L, 1] waveform; t: [B] real steps; mel: [B, L / mel_hop, n_mels] when n_mels > 0."""
    del train  # no dropout in DiffWave
    if shortcut_depth != 0:
      raise ValueError(f"shortcut_depth={shortcut_depth}: DiffWave has only depth 0")
    if (mel is None) != (self.n_mels == 0):
      raise ValueError(f"mel is {'missing' if mel is None else 'given'} but n_mels={self.n_mels}")
    x = x.astype(self.dtype)
    conv = functools.partial(Conv1x, convolution=self.convolution)
    h = nn.relu(conv(self.residual_channels, 1, weight_norm=self.weight_norm, dtype=self.dtype,
                     name="init_conv")(x))
    temb = layers.timestep_embedding(t, self.embed_dims[0])
    temb = nn.swish(nn.Dense(self.embed_dims[1], dtype=self.dtype, name="fc_t1")(temb))
    temb = nn.swish(nn.Dense(self.embed_dims[2], dtype=self.dtype, name="fc_t2")(temb))
    if self.mel_upsampler not in ("shared", "per_layer"):
      raise ValueError(f"mel_upsampler={self.mel_upsampler!r}: allowed 'shared', 'per_layer'")
    per_layer = self.mel_upsampler == "per_layer"
    if mel is not None:
      mel = mel.astype(self.dtype)
      if not per_layer:
        mel = MelUpsampler(self.mel_hop, dtype=self.dtype, name="mel_upsampler")(mel)
    skip = 0.0
    for n in range(self.num_layers):
      h, skip_n = ResidualLayer(self.residual_channels, self.skip_channels,
                                2 ** (n % self.dilation_cycle), self.weight_norm,
                                dtype=self.dtype, convolution=self.convolution,
                                step_in_residual=self.step_in_residual,
                                own_upsampler_hop=self.mel_hop if per_layer else 0,
                                name=f"residual_{n}")(h, temb, mel)
      skip = skip + skip_n
    h = skip * math.sqrt(1.0 / self.num_layers)
    h = nn.relu(conv(self.skip_channels, 1, weight_norm=self.weight_norm, dtype=self.dtype,
                     name="final_conv")(h))
    # The eps head in float32 and zero-initialised (reference ZeroConv1d: no weight norm).
    return conv(self.out_ch, 1, weight_norm=False, zero_init=True, dtype=jnp.float32,
                name="out_conv")(h.astype(jnp.float32))

  def init_all_depths(self, x, t, mel=None):
    """jdiff's init entry point (the U-Net runs every depth; DiffWave has one)."""
    if self.n_mels and mel is None:
      mel = jnp.zeros((x.shape[0], max(x.shape[1] // self.mel_hop, 1), self.n_mels), x.dtype)
    return [self(x, t, mel=mel)]
