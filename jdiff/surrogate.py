"""Surrogate models for surrogate diffusion (Algorithm 4): a trained SNGAN, or a jdiff DDPM at a
lower resolution (the study's DDPM-16) upsampled bilinearly to the diffusion's resolution."""

import importlib.util
import os
from typing import Callable

import jax
import ml_collections

from jdiff import config_lib
from jdiff.errors import ConfigError


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """get_config() of a config file given by path (configs/ is not a package)."""
  try:
    spec = importlib.util.spec_from_file_location(
        os.path.splitext(os.path.basename(path))[0], os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (a config file can raise anything)
    raise ConfigError(f"config.surrogate.config={path!r}: cannot load it "
                      f"({type(e).__name__}: {e})") from None
  config_lib.validate(config)
  return config


def make_surrogate_fn(config, mesh) -> Callable:
  """(key, batch_size) -> images [B, H, W, C] in [-1, 1] at config.data's resolution, from the
  surrogate named by config.surrogate (its config file and trained workdir)."""
  surrogate_config = load_config_file(config.surrogate.config)
  workdir = config.surrogate.workdir
  if surrogate_config.data.num_channels != config.data.num_channels:
    raise ConfigError(f"config.surrogate.config={config.surrogate.config!r}: its data has "
                      f"{surrogate_config.data.num_channels} channels; must match the diffusion "
                      f"model's data.num_channels={config.data.num_channels}")
  if config.surrogate.kind == "sngan":
    from jdiff import gan_train  # pylint: disable=g-import-not-at-top
    generate = gan_train.make_generate_fn(surrogate_config,
                                          gan_train.restore(surrogate_config, workdir, mesh))
  else:
    from jdiff import depth as depth_lib  # pylint: disable=g-import-not-at-top
    from jdiff import generate as generate_lib  # pylint: disable=g-import-not-at-top
    from jdiff import sampling, train  # pylint: disable=g-import-not-at-top
    from jdiff.models import build_model  # pylint: disable=g-import-not-at-top
    model = build_model(surrogate_config)
    params, _ = generate_lib.restore_ema_params(surrogate_config, workdir, model, mesh)
    sampler = sampling.build_sampler(surrogate_config, train.build_diffusion(surrogate_config))
    shape = train.image_shape(surrogate_config)

    def generate(key, batch_size):
      noise_key, sampler_key = jax.random.split(key)
      x_T = jax.random.normal(noise_key, (batch_size,) + shape)
      return sampler(depth_lib.depth_model_fn(model, params), x_T, sampler_key)

  size = config.data.image_size

  def surrogate_fn(key, batch_size):
    images = generate(key, batch_size)
    if images.shape[1:3] != (size, size):
      images = jax.image.resize(images, (batch_size, size, size, images.shape[-1]), "bilinear")
    return images
  return surrogate_fn
