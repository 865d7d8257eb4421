"""SNGAN (Miyato et al. 2018) for surrogate diffusion: ResNet generator, spectrally normalised
ResNet discriminator. Both keep state in the 'batch_stats' collection (generator BatchNorm
statistics; the discriminator's power-iteration vectors)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

BASE_SIZE = 4  # the generator's first feature map is 4x4, then doubles per block


def num_upsamplings(image_size: int) -> int:
  """Generator blocks for image_size = 4 * 2^k (k >= 0)."""
  k = int(round(math.log2(image_size / BASE_SIZE))) if image_size >= BASE_SIZE else -1
  if k < 0 or BASE_SIZE * 2 ** k != image_size:
    raise ValueError(f"SNGAN image size {image_size}: must be 4 * 2^k")
  return k


def _upsample(x):
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")


def _downsample(x):
  return nn.avg_pool(x, (2, 2), (2, 2))


class GeneratorBlock(nn.Module):
  ch: int

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    h = _upsample(nn.relu(norm()(x)))
    h = nn.Conv(self.ch, (3, 3))(h)
    h = nn.Conv(self.ch, (3, 3))(nn.relu(norm()(h)))
    return h + nn.Conv(self.ch, (1, 1))(_upsample(x))


class Generator(nn.Module):
  """z [B, z_dim] -> images [B, S, S, C] in [-1, 1]."""
  image_size: int
  num_channels: int
  ch: int = 128

  @nn.compact
  def __call__(self, z, train: bool = False):
    h = nn.Dense(BASE_SIZE * BASE_SIZE * self.ch)(z).reshape(-1, BASE_SIZE, BASE_SIZE, self.ch)
    for _ in range(num_upsamplings(self.image_size)):
      h = GeneratorBlock(self.ch)(h, train)
    h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
    return jnp.tanh(nn.Conv(self.num_channels, (3, 3))(h))


class _SNConv(nn.Module):
  features: int
  kernel: int = 3

  @nn.compact
  def __call__(self, x, update_stats: bool):
    return nn.SpectralNorm(nn.Conv(self.features, (self.kernel, self.kernel)))(
        x, update_stats=update_stats)


class DiscriminatorBlock(nn.Module):
  ch: int
  down: bool
  first: bool = False  # the first block skips the pre-activation of its input (raw images)

  @nn.compact
  def __call__(self, x, update_stats: bool):
    h = x if self.first else nn.relu(x)
    h = _SNConv(self.ch)(h, update_stats)
    h = _SNConv(self.ch)(nn.relu(h), update_stats)
    shortcut = x
    if self.first:  # pool then project, as in SNGAN's optimised first block
      shortcut = _SNConv(self.ch, 1)(_downsample(x), update_stats)
    elif self.down or x.shape[-1] != self.ch:
      shortcut = _SNConv(self.ch, 1)(x, update_stats)
    if self.down:
      h = _downsample(h)
      if not self.first:
        shortcut = _downsample(shortcut)
    return h + shortcut


class Discriminator(nn.Module):
  """images -> one logit each. Down to 8x8 (or 4x4 from 8x8 inputs), two more blocks, sum-pool."""
  ch: int = 128

  @nn.compact
  def __call__(self, x, update_stats: bool = False):
    h = DiscriminatorBlock(self.ch, down=True, first=True)(x, update_stats)
    while h.shape[1] > 8:
      h = DiscriminatorBlock(self.ch, down=True)(h, update_stats)
    for _ in range(2):
      h = DiscriminatorBlock(self.ch, down=False)(h, update_stats)
    h = jnp.sum(nn.relu(h), axis=(1, 2))
    return nn.SpectralNorm(nn.Dense(1))(h, update_stats=update_stats)[:, 0]


def build_gan(config):
  """(Generator, Discriminator) for config.data and config.gan."""
  generator = Generator(image_size=config.data.image_size,
                        num_channels=config.data.num_channels, ch=config.gan.g_ch)
  return generator, Discriminator(ch=config.gan.d_ch)
