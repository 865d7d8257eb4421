"""Training objectives. L_simple (Ho et al. eq. 6, Algorithm 1)."""

import jax.numpy as jnp

from jdiff import diffusion as diffusion_lib

LOSSES = ("simple",)


def mean_flat(x):
  """Mean over all but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def l_simple(diffusion: diffusion_lib.GaussianDiffusion, model_fn, x_start, t, noise, variance_type="fixedlarge"):
  """Per-example || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2 (mean over pixels)."""
  x_t = diffusion_lib.q_sample(diffusion, x_start, t, noise)
  eps, _ = diffusion_lib.split_model_output(model_fn(x_t, t), variance_type)
  return mean_flat((noise - eps) ** 2)
