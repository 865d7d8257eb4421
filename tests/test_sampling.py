"""Fast samplers (respacing, DDIM, FastDPM), their schedules, surrogate start, SNGAN.

The samplers run on Gaussian data N(mu, s^2) whose eps is known in closed form:
E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar).
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from jdiff import builders
from jdiff import config_lib
from jdiff import diffusion as diffusion_lib
from jdiff import sampling
from jdiff import schedules

T = 1000
BETA_START, BETA_END = 1e-4, 0.02
BETAS = schedules.linear_betas(T, BETA_START, BETA_END)
LOG_ABAR = np.cumsum(np.log1p(-BETAS))
SHAPE = (1, 2, 2, 1)
MU = np.linspace(-0.5, 0.5, 4).reshape(SHAPE)
S2 = np.linspace(0.5, 2.0, 4).reshape(SHAPE)


def gaussian_eps_fn(x, t):
  """Closed-form eps at real steps t; log abar interpolated between integer steps (error ~1e-6)."""
  log_abar = jnp.interp(t, jnp.arange(T, dtype=jnp.float32), jnp.asarray(LOG_ABAR, jnp.float32))
  a = jnp.exp(log_abar)[:, None, None, None]
  return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MU) / (a * S2 + 1 - a)


def expected_variance(log_levels):
  """Output variance of deterministic DDIM with the exact eps, from the levels alone.

  Each step maps y = x - sqrt(a) mu to y (sqrt(a a') s^2 + sqrt((1 - a)(1 - a'))) / v(a),
  v(a) = a s^2 + 1 - a: a contraction whose product tends to 1 as the steps get finer.
  """
  a = np.exp(np.asarray(log_levels, np.float64)[::-1])
  a_next = np.append(a[1:], 1.0)
  gain = np.prod([(np.sqrt(ai * an) * S2 + np.sqrt((1 - ai) * (1 - an))) / (ai * S2 + 1 - ai)
                  for ai, an in zip(a, a_next)], axis=0)
  return gain ** 2 * (a[0] * S2 + 1 - a[0])


def output_mean_and_variance(plan):
  """The deterministic sampler is affine in its start x = sqrt(a) mu + sqrt(v) z, z ~ N(0, 1):
  the output's mean is f(z = 0) and its variance (f(z = 1) - f(z = 0))^2, exactly."""
  a = float(plan.table["sqrt_a"][0]) ** 2
  run = jax.jit(lambda z: sampling.run_plan(plan, gaussian_eps_fn,
                                            np.sqrt(a) * MU + np.sqrt(a * S2 + 1 - a) * z,
                                            jax.random.key(0)))
  at_zero, at_one = run(jnp.zeros(SHAPE)), run(jnp.ones(SHAPE))
  return np.asarray(at_zero), np.asarray(at_one - at_zero) ** 2


def _ddim(num_steps, schedule):
  steps = schedules.step_schedule(T, num_steps, schedule)
  return sampling.ddim_plan(BETAS, steps, eta=0.0, clip_denoised=False), LOG_ABAR[steps]


def _fastdpm_var(num_steps, schedule):
  plan = sampling.fastdpm_plan(BETAS, num_steps, kind="var", schedule=schedule, kappa=0.0,
                               var_domain="full")
  return plan, schedules.var_steps(BETA_START, BETA_END, T, num_steps, schedule, "full")[1]


def _fastdpm_step(num_steps, schedule):
  plan = sampling.fastdpm_plan(BETAS, num_steps, kind="step", schedule=schedule, kappa=0.0,
                               clip_denoised=False)
  return plan, LOG_ABAR[schedules.step_schedule(T, num_steps, schedule)]


@pytest.mark.parametrize("make_plan,schedule", [
    (_ddim, "uniform"), (_ddim, "quadratic"), (_fastdpm_var, "linear"),
    (_fastdpm_var, "quadratic"), (_fastdpm_step, "quadratic")])
def test_deterministic_samplers_recover_gaussian_mean_and_variance(make_plan, schedule):
  errors = []
  for num_steps in (10, 20, 50, 100):
    plan, log_levels = make_plan(num_steps, schedule)
    assert plan.num_evaluations == num_steps
    mean, variance = output_mean_and_variance(plan)
    np.testing.assert_allclose(mean, MU, atol=2e-5)
    # The sampler computes exactly the variance its levels imply ...
    np.testing.assert_allclose(variance, expected_variance(log_levels), rtol=2e-4)
    # ... which approaches the data's as O(1/S).
    errors.append(np.max(np.abs(variance / S2 - 1)))
    assert errors[-1] < 4.5 / num_steps
  assert errors == sorted(errors, reverse=True)


def test_gamma_map_matches_discrete_schedule_and_inverts():
  steps = np.arange(T)
  stirling = schedules.continuous_log_alpha_bar(steps, BETA_START, BETA_END, T)
  exact = schedules.continuous_log_alpha_bar(steps, BETA_START, BETA_END, T, stirling=False)
  np.testing.assert_allclose(stirling, LOG_ABAR, rtol=1e-6, atol=0)
  # lgamma of ~5e4 loses ~1e-10 absolute to cancellation; the Stirling form does not.
  np.testing.assert_allclose(exact, LOG_ABAR, rtol=0, atol=1e-9)
  real_steps = np.linspace(-0.5, T - 1, 777)
  levels = schedules.continuous_log_alpha_bar(real_steps, BETA_START, BETA_END, T)
  assert np.all(np.diff(levels) < 0)
  np.testing.assert_allclose(schedules.continuous_step(levels, BETA_START, BETA_END, T),
                             real_steps, atol=1e-8)


def _fastdpm_reference_var_betas(num_steps, schedule):
  """FastDPM generate.py's get_VAR_noise, written out: bisection on x over its domain, stopping
  at the first midpoint whose product of (1 - beta~) lies in [target, (1 + 1e-4) target]."""
  target = np.prod(1 - np.linspace(BETA_START, BETA_END, T))
  if schedule == "linear":
    levels, (left, right) = (lambda x: np.linspace(BETA_START, x, num_steps)), (BETA_START, 0.99)
  else:
    levels = lambda x: np.array([BETA_START * (1 + i * x) ** 2 for i in range(num_steps)])
    left, right = 0.0, 0.95 / np.sqrt(BETA_START) / num_steps
  for _ in range(1000):
    x = (left + right) / 2
    if np.prod(1 - levels(x)) < target:
      right = x
    elif np.prod(1 - levels(x)) > (1 + 1e-4) * target:
      left = x
    else:
      break
  return levels(x)


@pytest.mark.parametrize("schedule", schedules.VAR_SCHEDULES)
@pytest.mark.parametrize("num_steps", [10, 50])
def test_var_levels_are_fastdpm_s_and_match_the_full_process(schedule, num_steps):
  betas = schedules.var_betas(BETA_START, BETA_END, T, num_steps, schedule)
  np.testing.assert_allclose(betas, _fastdpm_reference_var_betas(num_steps, schedule), rtol=1e-12)
  assert betas[0] == pytest.approx(BETA_START) and np.all(np.diff(betas) > 0)
  # The reference stops within 1e-4 (relative) above the full chain's abar_T, except where its
  # quadratic domain cannot reach it (S = 10: 516x); domain="full" always gets there.
  ratio = lambda b: np.exp(np.sum(np.log1p(-b)) - LOG_ABAR[-1])
  if schedule == "quadratic" and num_steps == 10:
    assert ratio(betas) == pytest.approx(515.627, rel=1e-4)
  else:
    assert 1.0 <= ratio(betas) <= 1.0 + 1e-4 + 1e-12
  full = schedules.var_betas(BETA_START, BETA_END, T, num_steps, schedule, domain="full")
  assert 1.0 <= ratio(full) <= 1.0 + 1e-4 + 1e-12
  steps, log_levels = schedules.var_steps(BETA_START, BETA_END, T, num_steps, schedule, "full")
  # The first level is 1 - beta_1 (step 0); the last is ~abar_T (step ~T - 1).
  np.testing.assert_allclose(steps[0], 0, atol=1e-6)
  np.testing.assert_allclose(steps[-1], T - 1, atol=1e-2)
  np.testing.assert_allclose(
      schedules.continuous_log_alpha_bar(steps, BETA_START, BETA_END, T), log_levels, rtol=1e-9)


def test_step_schedules_are_the_reference_codes():
  for num_steps in (10, 20, 30, 50, 100, 300):
    # DDIM (ermongroup/ddim) skip_type="quad" and FastDPM's "quadratic": int(linspace(...)^2).
    np.testing.assert_array_equal(
        schedules.step_schedule(T, num_steps, "quadratic"),
        [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), num_steps) ** 2])
    # DDIM's skip_type="uniform": range(0, T, T // S), which has more than S steps when S does
    # not divide T.
    np.testing.assert_array_equal(schedules.step_schedule(T, num_steps, "uniform"),
                                  list(range(0, T, T // num_steps)))
    # FastDPM's STEP "linear": floor(i (T - 1) / (S - 1)).
    np.testing.assert_array_equal(schedules.step_schedule(T, num_steps, "linear"),
                                  [int(np.floor(i * (T - 1.0) / (num_steps - 1.0)))
                                   for i in range(num_steps)])
  assert len(schedules.step_schedule(T, 30, "uniform")) == 31
  assert len(schedules.step_schedule(T, 300, "uniform")) == 334
  np.testing.assert_array_equal(schedules.respaced_steps(T, 50, "ddim"), np.arange(0, T, 20))
  np.testing.assert_array_equal(schedules.respaced_steps(10, 4, "even"), [0, 3, 6, 9])


def test_sectioned_respacing_is_improved_diffusion_s():
  """space_timesteps: equal sections (the first T % n one longer), round-half-even offsets."""
  np.testing.assert_array_equal(schedules.respaced_steps(10, 5, "2,3"), [0, 4, 5, 7, 9])
  # Sections of 6 and 5 steps; 2.5 rounds to 2 as Python's round does.
  np.testing.assert_array_equal(schedules.respaced_steps(11, 6, "3,3"), [0, 2, 5, 6, 8, 10])
  np.testing.assert_array_equal(schedules.respaced_steps(10, 3, "1,1,1"), [0, 4, 7])
  steps = schedules.respaced_steps(T, 30, "10,10,10")
  assert len(steps) == 30 and steps[0] == 0 and steps[-1] == T - 1
  np.testing.assert_array_equal(steps[:10], np.round(np.arange(10) * 333 / 9))
  # A single section is "even".
  np.testing.assert_array_equal(schedules.respaced_steps(T, 37, "37"),
                                schedules.respaced_steps(T, 37, "even"))
  with pytest.raises(ValueError, match="cannot take 6"):
    schedules.respaced_steps(10, 8, "2,6")


@pytest.mark.parametrize("name,fields,message", [
    ("respaced", dict(respacing="10,10,10", steps=20), "config.sampling.steps=20: must be the sum"),
    ("respaced", dict(respacing="10,x"), "config.sampling.respacing='10,x'"),
    ("respaced", dict(respacing="600,10", steps=610), "at most 500 steps per section"),
    ("ddim", dict(schedule="cosine"), "config.sampling.schedule='cosine'"),
    ("ddim", dict(clip_x0="yes"), "config.sampling.clip_x0='yes'"),
])
def test_sampler_convention_fields_are_validated(name, fields, message):
  config = config_lib.default_config()
  config.sampling.name = name
  config.sampling.update(fields)
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_lib.validate(config)


def test_each_sampler_defaults_to_its_reference_code():
  """DDIM: steps range(0, T, T // S), eta 0, no clipping; FastDPM: quadratic, kappa 1, no
  clipping; ancestral and respaced clip x0. sampling.clip_x0 overrides the default."""
  config = config_lib.default_config()
  config.diffusion.num_timesteps = T
  diffusion = diffusion_lib.GaussianDiffusion.from_betas(BETAS)
  ddim = builders.build_plan(config, diffusion, "ddim", 10)
  np.testing.assert_array_equal(ddim.table["t"][::-1], np.arange(0, T, 100))
  np.testing.assert_array_equal(ddim.table["sigma"], 0.0)
  fastdpm = builders.build_plan(config, diffusion, "fastdpm", 10, fastdpm_kind="step")
  reference = sampling.fastdpm_plan(BETAS, 10, kind="step", schedule="quadratic", kappa=1.0)
  np.testing.assert_array_equal(fastdpm.table["t"], reference.table["t"])
  np.testing.assert_array_equal(fastdpm.table["sigma"], reference.table["sigma"])
  assert np.all(fastdpm.table["sigma"][:-1] > 0)  # kappa = 1: DDPM-rev

  # An eps model whose x0 estimate leaves [-1, 1]: clipping changes the result.
  far_model = lambda x, t: -3.0 * jnp.ones_like(x)
  x_T = jnp.zeros(SHAPE)
  run = lambda plan: np.asarray(sampling.run_plan(plan, far_model, x_T, jax.random.key(0)))
  for name in ("ddim", "fastdpm"):
    unclipped = run(builders.build_plan(config, diffusion, name, 10, kappa=0.0))
    clipped = run(builders.build_plan(config, diffusion, name, 10, kappa=0.0, clip_x0="on"))
    assert np.max(np.abs(unclipped)) > 1.5 and np.max(np.abs(clipped)) <= 1.0 + 1e-6, name
  for name in ("ancestral", "respaced"):
    plan = builders.build_plan(config, diffusion, name, 10)
    assert builders.clip_x0(config, name)
    np.testing.assert_array_equal(run(plan), run(sampling.ancestral_plan(diffusion, clip_denoised=True))
                                  if name == "ancestral" else run(plan))
  config.sampling.clip_x0 = "off"
  assert not builders.clip_x0(config, "ancestral")


def test_respaced_betas_and_full_respacing_is_ancestral():
  abar = np.cumprod(1 - BETAS)
  steps = schedules.respaced_steps(T, 37, "even")
  betas = schedules.respaced_betas(abar, steps)
  expected = [1 - abar[steps[0]]] + [1 - abar[s] / abar[p] for p, s in zip(steps[:-1], steps[1:])]
  np.testing.assert_allclose(betas, expected, rtol=1e-12)
  np.testing.assert_allclose(np.cumprod(1 - betas), abar[steps], rtol=1e-12)
  # Respacing to every step is the ancestral sampler (learned variances included).
  small = schedules.linear_betas(20, 1e-3, 0.2)
  model_fn = lambda x, t: jnp.concatenate([0.3 * x, jnp.tanh(x)], axis=-1)
  x_T = jax.random.normal(jax.random.key(1), (3, 4, 4, 1))
  common = dict(variance_type="learned_range", clip_denoised=True)
  full = sampling.ancestral_sample(model_fn, diffusion_lib.GaussianDiffusion.from_betas(small),
                                   x_T, jax.random.key(2), **common)
  respaced = sampling.run_plan(sampling.respaced_plan(small, np.arange(20), **common), model_fn,
                               x_T, jax.random.key(2))
  np.testing.assert_allclose(respaced, full, atol=1e-5)


def test_respaced_learned_variance_uses_respaced_betas():
  """v = 1 (raw output 1) gives variance beta_{s_i} of the respaced process."""
  steps = np.array([0, 9, 19])
  model_fn = lambda x, t: jnp.concatenate([jnp.zeros_like(x), jnp.ones_like(x)], axis=-1)
  small = schedules.linear_betas(20, 1e-3, 0.2)
  plan = sampling.respaced_plan(small, steps, variance_type="learned_range", clip_denoised=False)
  one_step = plan.rows_up_to(9)  # rows 9 then 0: the first of them adds beta_{s_1} noise
  x = jnp.zeros((4096, 1, 1, 1))
  out = sampling.run_step_table(
      lambda x, row: plan.step(model_fn, x, row, jax.random.key(3)), x,
      {k: v[:1] for k, v in one_step.table.items()})
  beta = schedules.respaced_betas(np.cumprod(1 - small), steps)[1]
  assert float(jnp.var(out)) == pytest.approx(beta, rel=0.08)


def test_ddim_eta_zero_deterministic_eta_positive_stochastic():
  steps = schedules.step_schedule(T, 10, "uniform")
  x_T = jax.random.normal(jax.random.key(0), SHAPE)
  run = lambda eta, key: sampling.run_plan(sampling.ddim_plan(BETAS, steps, eta=eta),
                                           gaussian_eps_fn, x_T, key)
  np.testing.assert_array_equal(run(0.0, jax.random.key(1)), run(0.0, jax.random.key(2)))
  a, b = run(0.5, jax.random.key(1)), run(0.5, jax.random.key(2))
  assert np.max(np.abs(a - b)) > 1e-3
  np.testing.assert_array_equal(a, run(0.5, jax.random.key(1)))


def test_kappa_one_is_ddim_eta_one_and_depth_is_passed():
  plan = sampling.fastdpm_plan(BETAS, 10, kind="step", schedule="uniform", kappa=1.0,
                               depth_schedule=np.arange(T) * 3 // T)
  same = sampling.ddim_plan(BETAS, schedules.step_schedule(T, 10, "uniform"), eta=1.0)
  np.testing.assert_array_equal(plan.table["sigma"], same.table["sigma"])
  np.testing.assert_array_equal(plan.table["depth"], plan.table["t"].astype(int) * 3 // T)
  seen = []
  model_fn = lambda x, t, depth: (seen.append(depth), gaussian_eps_fn(x, t))[1]
  sampling.run_plan(plan, model_fn, jnp.zeros(SHAPE), jax.random.key(0))
  assert seen  # the model was called with the depth argument
  # VAR's real steps use k(floor(t)).
  var = sampling.fastdpm_plan(BETAS, 10, kind="var", schedule="linear", kappa=0.0,
                              depth_schedule=np.arange(T))
  np.testing.assert_array_equal(var.table["depth"], np.floor(var.table["t"]).astype(int))


def test_surrogate_start():
  small = schedules.linear_betas(50, 1e-3, 0.1)
  diffusion = diffusion_lib.GaussianDiffusion.from_betas(small)
  plan = sampling.ancestral_plan(diffusion, clip_denoised=False)
  model_fn = lambda x, t: 0.1 * x
  surrogate_fn = lambda key: jax.random.uniform(key, SHAPE, minval=-1, maxval=1)
  x_T = jax.random.normal(jax.random.key(0), SHAPE)
  key = jax.random.key(1)
  run = lambda t_mid: sampling.surrogate_sample(plan, model_fn, surrogate_fn, t_mid, 50, x_T, key)
  np.testing.assert_array_equal(run(50), sampling.ancestral_sample(
      model_fn, diffusion, x_T, key, clip_denoised=False))
  np.testing.assert_array_equal(run(0), surrogate_fn(jax.random.split(key)[0]))
  # t_mid = 1: x~0 noised to step 0, then one reverse step (no noise at step 0).
  x0 = surrogate_fn(jax.random.split(key)[0])
  x_1 = np.sqrt(1 - small[0]) * x0 + np.sqrt(small[0]) * x_T
  eps = 0.1 * x_1
  np.testing.assert_allclose(run(1), (x_1 - np.sqrt(small[0]) * eps) / np.sqrt(1 - small[0]),
                             rtol=1e-5, atol=1e-6)


def _config(**sampling_fields):
  config = config_lib.default_config()
  config.sampling.update(sampling_fields)
  return config


@pytest.mark.parametrize("fields,message", [
    (dict(name="plms"), "config.sampling.name='plms'"),
    (dict(name="ddim", eta=1.5), "config.sampling.eta=1.5"),
    (dict(name="fastdpm", kappa=-0.1), "config.sampling.kappa=-0.1"),
    (dict(name="ddim", steps=1), "config.sampling.steps=1"),
    (dict(name="ddim", steps=2000), "config.sampling.steps=2000"),
    (dict(name="ddim", schedule="cosine"), "config.sampling.schedule='cosine'"),
    (dict(name="fastdpm", fastdpm_kind="var", schedule="uniform"), "config.sampling.schedule"),
    (dict(name="fastdpm", fastdpm_kind="both"), "config.sampling.fastdpm_kind='both'"),
    (dict(name="respaced", respacing="ddim", steps=999), "config.sampling.steps=999"),
])
def test_bad_sampler_config_values(fields, message):
  with pytest.raises(config_lib.ConfigError, match="^" + message.replace("(", r"\(")):
    config_lib.validate(_config(**fields))


def test_fastdpm_needs_linear_schedule_and_build_sampler_dispatches():
  config = _config(name="fastdpm")
  config.diffusion.beta_schedule = "cosine"
  with pytest.raises(config_lib.ConfigError, match="config.diffusion.beta_schedule='cosine'"):
    config_lib.validate(config)
  config.diffusion.beta_schedule = "linear"
  diffusion = diffusion_lib.GaussianDiffusion.from_betas(BETAS)
  for fields, evaluations in [(dict(name="ancestral"), T), (dict(name="respaced", steps=50), 50),
                              (dict(name="ddim", steps=20, schedule="quadratic"), 20),
                              (dict(name="fastdpm", steps=10, fastdpm_kind="var",
                                    schedule="quadratic", kappa=1.0), 10)]:
    config = _config(**fields)
    config_lib.validate(config)
    assert builders.build_plan(config, diffusion).num_evaluations == evaluations


def test_sngan_shapes_and_one_training_step():
  from jdiff.drivers import gan_train
  from jdiff.models import gan
  config = config_lib.default_config()
  config.data.image_size, config.data.num_channels = 8, 1
  config.model.kind = "sngan"
  config.gan.update(z_dim=8, g_ch=16, d_ch=16, n_dis=2)
  config_lib.validate(config)
  generator, discriminator = gan.build_gan(config)
  optimizer = builders.build_gan_optimizer(config)
  state = builders.init_gan_state(config, generator, discriminator, optimizer, jax.random.key(0))
  images = builders.make_gan_generate_fn(config, state)(jax.random.key(1), 3)
  assert images.shape == (3, 8, 8, 1) and float(jnp.max(jnp.abs(images))) <= 1.0
  logits = discriminator.apply({"params": state.d_params, "batch_stats": state.d_stats}, images)
  assert logits.shape == (3,)
  real = np.random.default_rng(0).integers(0, 256, (2, 4, 8, 8, 1), dtype=np.uint8)
  step = jax.jit(gan_train.make_train_step(config, generator, discriminator, optimizer))
  new_state, metrics = step(state, real)
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["d_loss"]))
  assert np.isfinite(float(metrics["g_loss"]))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_state.g_params, state.g_params)
  assert all(jax.tree.leaves(changed))
  config.data.image_size = 12
  with pytest.raises(config_lib.ConfigError, match="config.data.image_size=12"):
    config_lib.validate(config)


def test_readme_sampler_snippet_runs_on_a_plain_function():
  """The README's three lines, as printed there, on a model function that is not jdiff's."""
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  block = re.search(r"```python\n(from jdiff import sampling, schedules\n.*?)```", text, re.S)
  assert block, "the README lost its sampler snippet"
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  # Data N(0, s^2): the exact eps is x_t sqrt(1 - abar) / (abar s^2 + 1 - abar), and
  # deterministic DDIM maps the prior's x_T to about s x_T.
  data_std = 0.5
  abar = jnp.asarray(np.cumprod(1.0 - schedules.linear_betas(1000)), jnp.float32)

  def eps_model(x, t):
    a = abar[t.astype(jnp.int32)][:, None, None, None]
    return x * jnp.sqrt(1.0 - a) / (a * data_std ** 2 + 1.0 - a)

  namespace = {"jax": jax, "x_T": x_T, "rng": jax.random.key(1), "eps_model": eps_model}
  exec(block.group(1), namespace)  # pylint: disable=exec-used  (defines plan and x0)
  assert namespace["plan"].num_evaluations == 50
  # A linear map (one gain for every unclipped pixel), near s: 50 DDIM steps shrink it ~6%.
  x0, x_T = np.asarray(namespace["x0"]), np.asarray(x_T)
  inside = np.abs(x0) < 0.99
  gains = x0[inside] / x_T[inside]
  np.testing.assert_allclose(gains, gains[0], rtol=1e-4)
  assert 0.9 * data_std < gains[0] < 1.02 * data_std, gains[0]
