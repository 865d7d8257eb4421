"""Schedules, q(x_t | x_0), the posterior and the ancestral sampler against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import diffusion as diffusion_lib
from jdiff import objectives
from jdiff import sampling
from jdiff import schedules


def test_linear_schedule_endpoints_and_spacing():
  betas = schedules.get_betas("linear", 1000)
  assert betas.dtype == np.float64 and betas.shape == (1000,)
  assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
  np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)


def test_cosine_schedule_matches_alpha_bar_formula():
  num_timesteps, s = 50, 0.008
  alphas_cumprod = np.cumprod(1 - schedules.get_betas("cosine", num_timesteps))
  t = np.arange(1, num_timesteps + 1) / num_timesteps
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
  expected = f(t) / f(0.0)
  # The last beta is clipped at 0.999, so compare the unclipped part.
  np.testing.assert_allclose(alphas_cumprod[:-1], expected[:-1], rtol=1e-9)


def test_unknown_schedule_is_rejected():
  with pytest.raises(ValueError, match="allowed"):
    schedules.get_betas("quadratic", 10)


@pytest.fixture
def diffusion():
  return diffusion_lib.GaussianDiffusion.from_betas(schedules.get_betas("linear", 1000))


def test_tables_are_cumulative_products(diffusion):
  betas = schedules.get_betas("linear", 1000)
  np.testing.assert_allclose(diffusion.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-6)
  np.testing.assert_allclose(diffusion.alphas_cumprod_prev[1:], diffusion.alphas_cumprod[:-1])
  assert float(diffusion.alphas_cumprod_prev[0]) == 1.0


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_posterior_against_bayes_rule(diffusion, t):
  """q(x_{t-1} | x_t, x_0) from the product of the two Gaussians, in float64."""
  betas = schedules.get_betas("linear", 1000)
  abar = np.cumprod(1 - betas)
  beta_t, abar_prev = betas[t], abar[t - 1]
  x_start, x_t = np.array([0.3, -0.7]), np.array([1.1, 0.2])
  # prior on x_{t-1}: N(sqrt(abar_prev) x0, 1 - abar_prev); likelihood: x_t ~ N(sqrt(1-beta) x_{t-1}, beta)
  precision = 1 / (1 - abar_prev) + (1 - beta_t) / beta_t
  variance = 1 / precision
  mean = variance * (np.sqrt(abar_prev) * x_start / (1 - abar_prev) + np.sqrt(1 - beta_t) * x_t / beta_t)
  got_mean, got_var, got_logvar = diffusion_lib.q_posterior_mean_variance(
      diffusion, jnp.asarray(x_start[None], jnp.float32), jnp.asarray(x_t[None], jnp.float32),
      jnp.array([t]))
  np.testing.assert_allclose(got_mean[0], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_var[0, 0], variance, rtol=1e-5)
  np.testing.assert_allclose(got_logvar[0, 0], np.log(variance), rtol=1e-5)


def test_posterior_log_variance_is_clipped_at_zero(diffusion):
  assert float(diffusion.posterior_variance[0]) == 0.0
  assert float(diffusion.posterior_log_variance_clipped[0]) == pytest.approx(
      float(np.log(diffusion.posterior_variance[1])))


def test_q_sample_moments_and_eps_round_trip(diffusion):
  t = jnp.array([0, 250, 999])
  x_start = jnp.full((3, 4), 0.5)
  noise = jax.random.normal(jax.random.key(0), (3, 4))
  x_t = diffusion_lib.q_sample(diffusion, x_start, t, noise)
  abar = np.asarray(diffusion.alphas_cumprod)[np.asarray(t)][:, None]
  np.testing.assert_allclose(x_t, np.sqrt(abar) * 0.5 + np.sqrt(1 - abar) * noise, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(diffusion_lib.predict_x0_from_eps(diffusion, x_t, t, noise), x_start,
                             atol=2e-4)
  np.testing.assert_allclose(diffusion_lib.predict_eps_from_x0(diffusion, x_t, t, x_start), noise,
                             rtol=1e-3, atol=1e-3)


def test_fixed_variances(diffusion):
  t = jnp.array([0, 1, 500])
  large = diffusion_lib.model_log_variance(diffusion, "fixedlarge", t, (3, 1))[:, 0]
  small = diffusion_lib.model_log_variance(diffusion, "fixedsmall", t, (3, 1))[:, 0]
  np.testing.assert_allclose(np.exp(large[1:]), np.asarray(diffusion.betas)[[1, 500]], rtol=1e-5)
  np.testing.assert_allclose(np.exp(small[1:]), np.asarray(diffusion.posterior_variance)[[1, 500]], rtol=1e-5)
  assert np.all(small <= large)


def test_l_simple_is_zero_for_the_true_noise_and_mse_otherwise(diffusion):
  x_start = jnp.zeros((2, 3, 3, 1))
  noise = jax.random.normal(jax.random.key(1), x_start.shape)
  t = jnp.array([3, 700])
  # With x_0 = 0, eps = x_t / sqrt(1 - abar_t) exactly.
  exact = lambda x, t: x / diffusion_lib.extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x.shape)
  np.testing.assert_allclose(objectives.l_simple(diffusion, exact, x_start, t, noise), 0.0, atol=1e-10)
  zero = lambda x, t: jnp.zeros_like(x)
  np.testing.assert_allclose(objectives.l_simple(diffusion, zero, x_start, t, noise),
                             np.mean(np.asarray(noise) ** 2, axis=(1, 2, 3)), rtol=1e-6)


def gaussian_eps_fn(diffusion, data_mean, data_std):
  """The exact E[eps | x_t] for data x_0 ~ N(data_mean, data_std^2 I)."""
  def model_fn(x, t):
    abar = diffusion_lib.extract(diffusion.alphas_cumprod, t.astype(jnp.int32), x.shape)
    return jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * data_mean) / (abar * data_std ** 2 + 1 - abar)
  return model_fn


@pytest.mark.parametrize("variance_type", ["fixedlarge", "fixedsmall"])
def test_ancestral_sampler_reproduces_gaussian_data_moments(diffusion, variance_type):
  data_mean, data_std = 0.4, 0.5
  model_fn = gaussian_eps_fn(diffusion, data_mean, data_std)
  x_T = jax.random.normal(jax.random.key(0), (4000, 2, 2, 1))
  sample = jax.jit(lambda x, key: sampling.ancestral_sample(
      model_fn, diffusion, x, key, variance_type=variance_type, clip_denoised=False))
  x_0 = np.asarray(sample(x_T, jax.random.key(1))).ravel()
  # 16000 draws: the standard error of the mean is 0.004 and of the std about 0.003.
  assert abs(x_0.mean() - data_mean) < 0.015
  assert abs(x_0.std() - data_std) < 0.015


def test_ancestral_sampler_is_deterministic_given_the_key(diffusion):
  model_fn = gaussian_eps_fn(diffusion, 0.0, 1.0)
  x_T = jnp.ones((2, 2, 2, 1))
  run = jax.jit(lambda key: sampling.ancestral_sample(model_fn, diffusion, x_T, key))
  np.testing.assert_array_equal(run(jax.random.key(3)), run(jax.random.key(3)))
  assert not np.allclose(run(jax.random.key(3)), run(jax.random.key(4)))
