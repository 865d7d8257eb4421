"""Gaussian diffusion math (Ho et al. 2020; Nichol & Dhariwal 2021 for learned variances).

Steps are 0-based indices t in {0..T-1}; tables are computed in float64 and kept as float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import choices

VARIANCE_TYPES = choices.VARIANCE_TYPES


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianDiffusion:
  """Precomputed per-step tables of the forward process and its posterior."""
  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  sqrt_recip_alphas_cumprod: jax.Array
  sqrt_recipm1_alphas_cumprod: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array
  log_betas_fixedlarge: jax.Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]

  @classmethod
  def from_betas(cls, betas) -> "GaussianDiffusion":
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
      raise ValueError("betas must be a 1-D array with values in (0, 1)")
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # The posterior variance is 0 at t = 0; its log is clipped to the value at t = 1.
    posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    # "fixedlarge" uses beta_t, except at t = 0 where beta-tilde_1 gives a sane decoder.
    log_betas_fixedlarge = np.log(np.append(posterior_variance[1], betas[1:]))
    tables = dict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
        log_betas_fixedlarge=log_betas_fixedlarge,
    )
    return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in tables.items()})


def extract(table: jax.Array, t: jax.Array, x_shape) -> jax.Array:
  """table[t] reshaped to broadcast against a batch of shape x_shape."""
  return table[t].reshape(t.shape + (1,) * (len(x_shape) - t.ndim))


def q_sample(diffusion: GaussianDiffusion, x_start, t, noise):
  """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
  return (extract(diffusion.sqrt_alphas_cumprod, t, x_start.shape) * x_start
          + extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)


def q_mean_variance(diffusion: GaussianDiffusion, x_start, t):
  mean = extract(diffusion.sqrt_alphas_cumprod, t, x_start.shape) * x_start
  variance = extract(1.0 - diffusion.alphas_cumprod, t, x_start.shape)
  return mean, variance, jnp.log(variance)


def q_posterior_mean_variance(diffusion: GaussianDiffusion, x_start, x_t, t):
  """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
  mean = (extract(diffusion.posterior_mean_coef1, t, x_t.shape) * x_start
          + extract(diffusion.posterior_mean_coef2, t, x_t.shape) * x_t)
  variance = extract(diffusion.posterior_variance, t, x_t.shape)
  log_variance = extract(diffusion.posterior_log_variance_clipped, t, x_t.shape)
  return mean, variance, log_variance


def predict_x0_from_eps(diffusion: GaussianDiffusion, x_t, t, eps):
  return (extract(diffusion.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
          - extract(diffusion.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)


def predict_eps_from_x0(diffusion: GaussianDiffusion, x_t, t, x_start):
  return ((extract(diffusion.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x_start)
          / extract(diffusion.sqrt_recipm1_alphas_cumprod, t, x_t.shape))


def split_model_output(model_output, variance_type: str):
  """(eps, variance interpolation v or None). learned_range models output 2C channels."""
  if variance_type == "learned_range":
    eps, v_raw = jnp.split(model_output, 2, axis=-1)
    return eps, v_raw
  return model_output, None


def model_log_variance(diffusion: GaussianDiffusion, variance_type: str, t, x_shape, v_raw=None):
  """log Sigma_theta(x_t, t) for each variance type."""
  if variance_type == "fixedlarge":
    return extract(diffusion.log_betas_fixedlarge, t, x_shape)
  if variance_type == "fixedsmall":
    return extract(diffusion.posterior_log_variance_clipped, t, x_shape)
  if variance_type == "learned_range":
    # Sigma = exp(v log beta_t + (1 - v) log beta-tilde_t); v in [0, 1] from the raw output in [-1, 1].
    min_log = extract(diffusion.posterior_log_variance_clipped, t, x_shape)
    max_log = extract(jnp.log(diffusion.betas), t, x_shape)
    frac = (v_raw + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log
  raise ValueError(f"variance_type {variance_type!r}: allowed {VARIANCE_TYPES}")


def p_mean_variance(diffusion: GaussianDiffusion, model_output, x_t, t, *,
                    variance_type: str = "fixedlarge", clip_denoised: bool = True):
  """Mean and log variance of p_theta(x_{t-1} | x_t), plus the predicted x_0 and eps."""
  eps, v_raw = split_model_output(model_output, variance_type)
  log_variance = model_log_variance(diffusion, variance_type, t, x_t.shape, v_raw)
  pred_x0 = predict_x0_from_eps(diffusion, x_t, t, eps)
  if clip_denoised:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
  mean, _, _ = q_posterior_mean_variance(diffusion, pred_x0, x_t, t)
  return mean, log_variance, pred_x0, eps


# Likelihood terms (nats), used by the variational bound.

def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
  # The tanh approximation used by Ho et al. keeps the decoder's bins summing to one.
  return 0.5 * (1.0 + jnp.tanh(jnp.sqrt(2.0 / jnp.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """log P(x) of 8-bit data in [-1, 1] under a Gaussian discretised into 256 bins, elementwise."""
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  cdf_delta = cdf_plus - cdf_min
  return jnp.where(
      x < -0.999, log_cdf_plus,
      jnp.where(x > 0.999, log_one_minus_cdf_min, jnp.log(jnp.maximum(cdf_delta, 1e-12))))
