"""Surrogate models for surrogate diffusion (Algorithm 4): a trained SNGAN, or a jdiff DDPM at a
lower resolution (the study's DDPM-16) upsampled bilinearly to the diffusion's resolution."""

from typing import Callable

import jax

from jdiff import builders
from jdiff import config_lib
from jdiff.errors import ConfigError


def make_surrogate_fn(config, mesh) -> Callable:
  """(key, batch_size) -> images [B, H, W, C] in [-1, 1] at config.data's resolution, from the
  surrogate named by config.surrogate (its config file and trained workdir)."""
  try:
    surrogate_config = config_lib.load_config(config.surrogate.config)
  except ConfigError as e:
    raise ConfigError(f"config.surrogate.config: {e}") from None
  workdir = config.surrogate.workdir
  if surrogate_config.data.num_channels != config.data.num_channels:
    raise ConfigError(f"config.surrogate.config={config.surrogate.config!r}: its data has "
                      f"{surrogate_config.data.num_channels} channels; must match the diffusion "
                      f"model's data.num_channels={config.data.num_channels}")
  if config.surrogate.kind == "sngan":
    generate = builders.make_gan_generate_fn(
        surrogate_config, builders.restore_gan_state(surrogate_config, workdir, mesh))
  else:
    model = builders.build_model(surrogate_config)
    params, _ = builders.restore_ema_params(surrogate_config, workdir, model, mesh)
    sampler, _ = builders.build_sampler(surrogate_config,
                                        builders.build_diffusion(surrogate_config))
    shape = builders.image_shape(surrogate_config)

    def generate(key, batch_size):
      noise_key, sampler_key = jax.random.split(key)
      x_T = jax.random.normal(noise_key, (batch_size,) + shape)
      return sampler(builders.make_model_fn(model, params), x_T, sampler_key)

  size = config.data.image_size

  def surrogate_fn(key, batch_size):
    images = generate(key, batch_size)
    if images.shape[1:3] != (size, size):
      images = jax.image.resize(images, (batch_size, size, size, images.shape[-1]), "bilinear")
    return images
  return surrogate_fn
