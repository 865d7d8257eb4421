"""Samplers: one jitted lax.scan over a precomputed step table.

A model function maps (x_t, t) -> model output, t a float [B] vector of steps; with a depth
schedule it is called as model_fn(x_t, t, depth) with depth a traced int32 scalar. The
samplers are pure and jittable; `make_sample_fn` jits one with the batch sharded on the mesh.
"""

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import diffusion as diffusion_lib
from jdiff import parallel


def call_model(model_fn: Callable, x, t, depth=None):
  t_vec = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
  if depth is None:
    return model_fn(x, t_vec)
  return model_fn(x, t_vec, depth)


def run_step_table(step_fn: Callable, x_init, table: dict):
  """x <- step_fn(x, row) for each row of the table (dict of equal-length arrays), in one scan."""
  def body(x, row):
    return step_fn(x, row), None
  x, _ = jax.lax.scan(body, x_init, {k: jnp.asarray(v) for k, v in table.items()})
  return x


def ancestral_sample(model_fn: Callable, diffusion: diffusion_lib.GaussianDiffusion, x_T, rng, *,
                     variance_type: str = "fixedlarge", clip_denoised: bool = True,
                     depth_schedule: Optional[np.ndarray] = None):
  """Ho et al.'s Algorithm 2 from x_T over all T steps; depth_schedule[t] is k(t) if given."""
  num_timesteps = diffusion.num_timesteps
  steps = np.arange(num_timesteps - 1, -1, -1, dtype=np.int32)
  table = {"t": steps}
  if depth_schedule is not None:
    table["depth"] = np.asarray(depth_schedule, np.int32)[steps]

  def step(x, row):
    t = jnp.full(x.shape[:1], row["t"])
    output = call_model(model_fn, x, t, row.get("depth"))
    mean, log_variance, _, _ = diffusion_lib.p_mean_variance(
        diffusion, output, x, t, variance_type=variance_type, clip_denoised=clip_denoised)
    noise = jax.random.normal(jax.random.fold_in(rng, row["t"]), x.shape, x.dtype)
    return mean + jnp.where(row["t"] > 0, jnp.exp(0.5 * log_variance), 0.0) * noise

  return run_step_table(step, x_T, table)


def build_sampler(config, diffusion: diffusion_lib.GaussianDiffusion) -> Callable:
  """sampler(model_fn, x_T, rng) for config.sampling."""
  def sampler(model_fn, x_T, rng):
    return ancestral_sample(model_fn, diffusion, x_T, rng,
                            variance_type=config.diffusion.variance_type,
                            clip_denoised=config.sampling.clip_denoised)
  return sampler


def make_sample_fn(sampler: Callable, model_fn_from_params: Callable, mesh, image_shape,
                   batch_size: int):
  """Jitted (params, rng) -> images [batch_size, *image_shape], the batch sharded on the mesh.

  sampler(model_fn, x_T, rng) runs the reverse process; model_fn_from_params(params) gives the
  model function for those params.
  """
  parallel.check_batch_divisible(batch_size, "sampling.batch_size")
  sharding = parallel.batch_sharding(mesh)

  @functools.partial(jax.jit, out_shardings=sharding)
  def sample_fn(params, rng):
    noise_rng, sampler_rng = jax.random.split(rng)
    x_T = jax.random.normal(noise_rng, (batch_size,) + tuple(image_shape))
    x_T = jax.lax.with_sharding_constraint(x_T, sharding)
    return sampler(model_fn_from_params(params), x_T, sampler_rng)

  return sample_fn


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 in [0, 255]."""
  return np.asarray(np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255), np.uint8)
