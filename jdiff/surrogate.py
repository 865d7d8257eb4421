"""Surrogate models for surrogate diffusion (the HSE coursework, Algorithm 4, section 4.6).

Algorithm 4 starts the reverse process at t_mid from x_{t_mid} ~ q(x_{t_mid} | x~0), x~0 drawn
from a cheaper model S (sampling.with_surrogate does lines 2-7). S is one of:
  sngan  a trained SNGAN generator: x~0 = G(z), one generator pass.
  ddpm   a jdiff DDPM at a lower resolution (the study's DDPM-16, which "executes only t_mid
         diffusion steps"): its own chain from T down to x_{t_mid} at its resolution, then its x0
         estimate there (one more evaluation at x_{t_mid}); at t_mid = 0 its whole chain.
Both are resized bilinearly to the diffusion's resolution.
"""

from typing import Callable, Tuple

import jax

from jdiff import builders
from jdiff import config_lib
from jdiff import sampling
from jdiff.errors import ConfigError


def load_surrogate(config, mesh) -> Callable[[int], Tuple[Callable, int]]:
  """Restores the surrogate named by config.surrogate (its config file and trained workdir).

  Returns surrogate_at(t_mid) -> (surrogate_fn(key, batch_size) -> images [B, H, W, C] in
  [-1, 1] at config.data's resolution, the surrogate's network evaluations per sample). t_mid is
  1-based, as config.surrogate.t_mid; at t_mid >= T the surrogate is not run (0 evaluations).
  """
  try:
    surrogate_config = config_lib.load_config(config.surrogate.config)
  except ConfigError as e:
    raise ConfigError(f"config.surrogate.config: {e}") from None
  workdir = config.surrogate.workdir
  if surrogate_config.data.num_channels != config.data.num_channels:
    raise ConfigError(f"config.surrogate.config={config.surrogate.config!r}: its data has "
                      f"{surrogate_config.data.num_channels} channels; must match the diffusion "
                      f"model's data.num_channels={config.data.num_channels}")
  num_timesteps = config.diffusion.num_timesteps
  size = config.data.image_size

  def resized(images):
    if images.shape[1:3] != (size, size):
      images = jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]),
                                "bilinear")
    return images

  if config.surrogate.kind == "sngan":
    generate = builders.make_gan_generate_fn(
        surrogate_config, builders.restore_gan_state(surrogate_config, workdir, mesh))

    def gan_at(t_mid: int):
      evaluations = 0 if t_mid >= num_timesteps else 1
      return (lambda key, batch_size: resized(generate(key, batch_size))), evaluations
    return gan_at

  if surrogate_config.diffusion.num_timesteps != num_timesteps:
    raise ConfigError(
        f"config.surrogate.config={config.surrogate.config!r}: its diffusion.num_timesteps="
        f"{surrogate_config.diffusion.num_timesteps} must equal this model's {num_timesteps} "
        "(the surrogate's chain runs from T down to t_mid)")
  model = builders.build_model(surrogate_config)
  params, _ = builders.restore_ema_params(surrogate_config, workdir, model, mesh)
  plan = builders.build_plan(surrogate_config, builders.build_diffusion(surrogate_config))
  shape = builders.image_shape(surrogate_config)

  def ddpm_at(t_mid: int):
    # Rows from T down to 1-based t_mid (0-based t_mid - 1); the last one gives the x0 estimate.
    # At t_mid = 0 that is the whole chain, whose last row's x0 estimate is its sample.
    part = plan.rows_down_to(max(t_mid - 1, 0))
    evaluations = 0 if t_mid >= num_timesteps else part.num_evaluations

    def surrogate_fn(key, batch_size):
      noise_key, sampler_key = jax.random.split(key)
      x_T = jax.random.normal(noise_key, (batch_size,) + shape)
      return resized(sampling.run_plan_to_x0(part, builders.make_model_fn(model, params), x_T,
                                             sampler_key))
    return surrogate_fn, evaluations
  return ddpm_at
