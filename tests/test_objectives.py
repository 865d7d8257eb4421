"""Objectives (L_simple, hybrid, IWDiff), the loss-aware timestep sampler, VLB terms, presets.

Compiles dominate the run time on a CPU, so the networks here have one resolution level and
each test compiles as few functions as it can.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from jdiff import builders
from jdiff import checkpoint as checkpoint_lib
from jdiff import config_lib
from jdiff import diffusion as diffusion_lib
from jdiff import objectives
from jdiff import parallel
from jdiff.drivers import train as train_lib
from jdiff.models import layers, presets

BATCH = 4


def _small_config():
  """The shared tiny config with a single resolution level (8x8) to keep compiles short."""
  config = tiny_config()
  config.model.ch_mult = (1,)
  return config


def _diffusion(num_timesteps=20):
  return diffusion_lib.GaussianDiffusion.from_betas(np.linspace(1e-4, 0.2, num_timesteps))


def _tiny_model_and_params(config):
  config_lib.validate(config)
  model = builders.build_model(config)
  return model, builders.new_params(model, config, 0)


def _batch(config, seed=0):
  shape = (BATCH,) + builders.image_shape(config)
  x_start = jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)
  t = jnp.arange(BATCH) * (config.diffusion.num_timesteps // BATCH)
  return x_start, t


# --- IWDiff ----------------------------------------------------------------------------------

def test_iwdiff_with_one_draw_equals_l_simple_exactly():
  """Op by op (no jit, so no fusion reorders float sums) with a per-pixel linear eps model."""
  diffusion = _diffusion()
  x_start = jax.random.uniform(jax.random.key(0), (BATCH, 4, 4, 1), minval=-1, maxval=1)
  t = jnp.array([0, 3, 10, 19])
  noise = jax.random.normal(jax.random.key(1), x_start.shape)
  params = {"w": jax.random.normal(jax.random.key(2), (4, 4, 1)), "b": jnp.float32(0.1)}

  def draw_loss_fn(p, draw_noise, dropout_rng):
    del dropout_rng
    model_fn = lambda x_t, t: p["w"] * x_t + p["b"] * t[:, None, None, None]
    return objectives.l_simple(diffusion, model_fn, x_start, t, draw_noise)

  iw_loss, iw_grads, _ = objectives.objective_value_and_grad(
      draw_loss_fn, params, noise[None], jax.random.split(jax.random.key(3), 1), jnp.ones(BATCH))
  simple_loss, simple_grads = jax.value_and_grad(
      lambda p: jnp.mean(draw_loss_fn(p, noise, None)))(params)
  assert iw_loss == simple_loss
  jax.tree.map(np.testing.assert_array_equal, iw_grads, simple_grads)


def _linear_eps_setup(num_draws):
  """A per-pixel linear eps model on 4x4x1 examples (D = 16) and k noise draws."""
  diffusion = _diffusion()
  x_start = jax.random.uniform(jax.random.key(0), (BATCH, 4, 4, 1), minval=-1, maxval=1)
  t = jnp.array([0, 3, 10, 19])
  noises = jax.random.normal(jax.random.key(1), (num_draws,) + x_start.shape)
  params = {"w": 0.5 * jax.random.normal(jax.random.key(2), (4, 4, 1)), "b": jnp.float32(0.05)}
  model = lambda p, x_t, t: p["w"] * x_t + p["b"] * t[:, None, None, None]

  def draw_loss_fn(p, draw_noise, dropout_rng):
    del dropout_rng
    return objectives.l_simple(diffusion, lambda x_t, t: model(p, x_t, t), x_start, t, draw_noise)

  def squared_errors(p):  # [k, B, 4, 4, 1], written out from q(x_t | x_0) without objectives.py
    abar = jnp.asarray(diffusion.alphas_cumprod)[t][:, None, None, None]
    x_t = jnp.sqrt(abar) * x_start + jnp.sqrt(1 - abar) * noises
    return (noises - jax.vmap(lambda x: model(p, x, t))(x_t)) ** 2
  return draw_loss_fn, params, noises, squared_errors


def test_iwdiff_is_algorithm_3_with_weights_from_the_summed_squared_error():
  """Line 6: l_i = ||eps_i - eps_theta||^2 summed over the D = 16 values; lines 8-10: weights
  exp(l_i - l_max) / s held constant; jdiff differentiates line 10's sum_i w_i l_i divided by D.
  A flipped softmax sign, weights from the per-pixel mean, or gradient through the weights fail."""
  draw_loss_fn, params, noises, squared_errors = _linear_eps_setup(num_draws=3)
  dims = 16
  scale = objectives.iwdiff_weight_scale("sum", (4, 4, 1))
  assert scale == dims
  loss, grads, per_example = objectives.objective_value_and_grad(
      draw_loss_fn, params, noises, jax.random.split(jax.random.key(3), 3), jnp.ones(BATCH),
      weight_scale=scale)

  l = np.asarray(jnp.sum(squared_errors(params), axis=(2, 3, 4)), np.float64)  # [k, B], line 6
  w = np.exp(l - l.max(axis=0)) / np.sum(np.exp(l - l.max(axis=0)), axis=0)   # lines 8-9
  assert np.median(w.max(axis=0)) > 0.6, "the test needs weights far from uniform"
  np.testing.assert_allclose(per_example, np.sum(w * l, axis=0) / dims, rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(np.sum(w * l, axis=0)) / dims, rtol=1e-5)
  constant_w = jnp.asarray(w, jnp.float32)
  expected = jax.grad(lambda p: jnp.mean(jnp.sum(
      constant_w * jnp.sum(squared_errors(p), axis=(2, 3, 4)), axis=0)) / dims)(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, expected)

  # The ablation: weights from the per-pixel mean, i.e. a 16x higher softmax temperature.
  _, _, mean_weighted = objectives.objective_value_and_grad(
      draw_loss_fn, params, noises, jax.random.split(jax.random.key(3), 3), jnp.ones(BATCH),
      weight_scale=objectives.iwdiff_weight_scale("mean", (4, 4, 1)))
  w_mean = np.exp(l / dims) / np.sum(np.exp(l / dims), axis=0)
  np.testing.assert_allclose(mean_weighted, np.sum(w_mean * l, axis=0) / dims, rtol=1e-5)


def test_train_step_takes_iwdiff_weights_from_the_config():
  """The train step's loss with weights from the sum differs from the mean ablation's (same rngs),
  and the sum-weighted loss is the larger: the softmax leans to the worse draw."""
  losses = {}
  for weights_from in objectives.IWDIFF_WEIGHTS:
    config = _small_config()
    config.training.loss = "iwdiff"
    config.training.iwdiff_weights = weights_from
    config_lib.validate(config)
    model = builders.build_model(config)
    diffusion = builders.build_diffusion(config)
    optimizer = builders.build_optimizer(config.training)
    mesh = parallel.make_mesh()
    state = builders.build_state(config, model, optimizer, mesh)
    step = train_lib.make_train_step(config, model, diffusion, optimizer, mesh)
    images = np.random.default_rng(0).integers(0, 256, (BATCH,) + builders.image_shape(config),
                                               dtype=np.uint8)
    _, metrics = step(state, images)
    losses[weights_from] = float(metrics["loss"])
  assert losses["sum"] > losses["mean"] * 1.001, losses


def test_importance_weights_sum_to_one_and_carry_no_gradient():
  draw_losses = jax.random.uniform(jax.random.key(0), (3, 5)) * 4.0
  weights = objectives.importance_weights(draw_losses)
  np.testing.assert_allclose(jnp.sum(weights, axis=0), np.ones(5), rtol=1e-6)
  weight_grad = jax.grad(lambda l: jnp.sum(objectives.importance_weights(l) * 7.0))(draw_losses)
  np.testing.assert_array_equal(weight_grad, np.zeros_like(draw_losses))
  # So d/dl_i sum_j w_j l_j is w_i: the weights act as constants.
  np.testing.assert_allclose(jax.grad(lambda l: jnp.sum(objectives.iwdiff_combine(l)))(draw_losses),
                             weights, rtol=1e-6)
  # Algorithm 3's softmax is stable for large losses.
  assert np.all(np.isfinite(objectives.importance_weights(draw_losses + 1e4)))


def test_iwdiff_gradient_accumulation_matches_all_draws_at_once():
  params = {"w": jnp.array([0.5, -1.0, 2.0])}
  noises = jax.random.normal(jax.random.key(0), (3, BATCH, 3))
  rngs = jax.random.split(jax.random.key(1), 3)
  time_weights = jnp.array([1.0, 0.5, 2.0, 1.5])

  def draw_loss_fn(p, noise, dropout_rng):
    return jnp.mean((noise * p["w"] - jax.random.normal(dropout_rng, noise.shape)) ** 2, axis=-1)

  direct = objectives.objective_value_and_grad(draw_loss_fn, params, noises, rngs, time_weights)
  accumulated = objectives.objective_value_and_grad(draw_loss_fn, params, noises, rngs,
                                                    time_weights, accumulate=True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), direct, accumulated)


# --- Loss-aware timestep sampler --------------------------------------------------------------

def test_timestep_probabilities_against_a_hand_computed_history():
  losses = np.array([[1.0] * 10, [2.0] * 10, [3.0, 4.0] * 5, [0.0] * 10], np.float32)
  history = objectives.LossHistory(losses=jnp.asarray(losses), counts=jnp.full((4,), 10))
  rms = np.array([1.0, 2.0, np.sqrt(12.5), 0.0])
  u = objectives.UNIFORM_FRACTION
  expected = (1 - u) * rms / rms.sum() + u / 4
  probabilities = objectives.timestep_probabilities(history)
  np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
  t, weights = objectives.sample_timesteps(history, jax.random.key(0), 1000)
  np.testing.assert_allclose(weights, 1.0 / (4 * expected[np.asarray(t)]), rtol=1e-5)
  assert np.sum(np.asarray(t) == 3) < 10  # p_3 = u / 4: almost never drawn
  # One t short of a full history: still uniform.
  not_warm = dataclasses.replace(history, counts=jnp.array([10, 10, 9, 10]))
  np.testing.assert_allclose(objectives.timestep_probabilities(not_warm), np.full(4, 0.25))


def test_loss_history_update_matches_a_sequential_ring_buffer():
  num_timesteps, length = 3, objectives.HISTORY_LENGTH
  history = objectives.init_loss_history(num_timesteps)
  expected_losses = np.zeros((num_timesteps, length), np.float32)
  expected_counts = np.zeros(num_timesteps, np.int64)
  rng = np.random.default_rng(0)
  for batch_size in (5, 30, 2):  # 30 draws over 3 steps: more than 10 share a t
    t = rng.integers(0, num_timesteps, batch_size)
    losses = rng.random(batch_size).astype(np.float32)
    history = objectives.update_loss_history(history, jnp.asarray(t), jnp.asarray(losses))
    for step, loss in zip(t, losses):
      expected_losses[step, expected_counts[step] % length] = loss
      expected_counts[step] += 1
  np.testing.assert_array_equal(history.losses, expected_losses)
  np.testing.assert_array_equal(history.counts, expected_counts)


# --- Train steps ------------------------------------------------------------------------------

def _train_setup(config):
  config_lib.validate(config)
  mesh = parallel.make_mesh()
  model = builders.build_model(config)
  optimizer = builders.build_optimizer(config.training)
  state = builders.build_state(config, model, optimizer, mesh)
  step_fn = train_lib.make_train_step(config, model, builders.build_diffusion(config), optimizer,
                                      mesh)
  batches = np.random.default_rng(0).integers(
      0, 256, (3, train_lib.images_per_step(config)) + builders.image_shape(config), dtype=np.uint8)
  return mesh, model, optimizer, state, step_fn, batches


def test_hybrid_train_step_is_finite():
  """L_simple steps run in the core tests; IWDiff in the checkpoint test below."""
  config = _small_config()
  config.training.loss = "hybrid"
  config.diffusion.variance_type = "learned_range"
  _, _, _, state, step_fn, batches = _train_setup(config)
  for batch in batches[:2]:
    state, metrics = step_fn(state, batch)
    assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"]))
  assert int(state.step) == 2


def test_loss_aware_iwdiff_state_survives_checkpoint_and_resume(tmp_path):
  config = _small_config()
  config.training.loss = "iwdiff"
  config.training.iwdiff_accumulate = True
  config.training.timestep_sampler = "loss_aware"
  config.training.extra_updates = 2
  mesh, model, optimizer, state, step_fn, batches = _train_setup(config)
  for batch in batches[:2]:
    state, metrics = step_fn(state, batch)
    assert bool(metrics["finite"])
  # Each step records the batch plus two forward-only batches.
  assert int(jnp.sum(state.loss_history.counts)) == 2 * 3 * config.training.batch_size

  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=1)
  identity = config_lib.checkpoint_identity(config, "train")
  checkpointer.save(2, builders.checkpoint_items(state),
                    checkpoint_lib.identity_record(config.to_dict(), identity))
  checkpointer.wait()
  abstract = builders.abstract_state(config, model, optimizer, mesh)
  step, items = checkpointer.restore_latest(builders.checkpoint_items(abstract), identity)
  checkpointer.close()
  restored = builders.state_from_items(items)
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, restored, state)

  # The "+2" updates read images of their own (rows 1, 2 of every group of 3), not the training
  # batch's: other extra images change the history, not the parameters.
  other_extras = batches[2].copy()
  other_extras.reshape((-1, 3) + other_extras.shape[1:])[:, 1:] = 255 - batches[2].reshape(
      (-1, 3) + other_extras.shape[1:])[:, 1:]
  changed, _ = step_fn(jax.tree.map(jnp.copy, state), other_extras)  # steps donate their state
  continued, _ = step_fn(state, batches[2])
  resumed, _ = step_fn(restored, batches[2])
  jax.tree.map(np.testing.assert_array_equal, resumed, continued)
  jax.tree.map(np.testing.assert_array_equal, changed.params, continued.params)
  assert not np.array_equal(changed.loss_history.losses, continued.loss_history.losses)


def test_loss_aware_sampling_with_a_depth_scheme_is_a_config_error():
  config = _small_config()
  config.training.timestep_sampler = "loss_aware"
  config.depth.training = "random"
  with pytest.raises(config_lib.ConfigError, match="training.timestep_sampler='loss_aware'"):
    config_lib.validate(config)


# --- VLB ----------------------------------------------------------------------------------------

def test_vlb_terms_against_closed_form_gaussian_kls():
  diffusion = _diffusion()
  betas = np.asarray(diffusion.betas, np.float64)
  alphas_cumprod = np.cumprod(1 - betas)
  x_start = jax.random.uniform(jax.random.key(0), (BATCH, 4, 4, 1), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(1), x_start.shape)
  eps_error = 0.1 * jax.random.normal(jax.random.key(2), x_start.shape)
  t = jnp.array([1, 5, 12, 19])
  x_t = diffusion_lib.q_sample(diffusion, x_start, t, noise)
  tt = np.asarray(t)
  alpha = 1 - betas[tt]
  beta_tilde = betas[tt] * (1 - alphas_cumprod[tt - 1]) / (1 - alphas_cumprod[tt])
  # Eq. 5: the mean part of L_{t-1} is beta^2 / (2 sigma^2 alpha (1 - abar)) ||eps - eps_hat||^2.
  mean_coef = betas[tt] ** 2 / (2 * alpha * (1 - alphas_cumprod[tt]))
  squared_error = np.mean(np.asarray(eps_error, np.float64) ** 2, axis=(1, 2, 3))
  for variance_type, sigma2 in (("fixedsmall", beta_tilde), ("fixedlarge", betas[tt])):
    # KL(N(m1, s1) || N(m2, s2)) = 0.5 (log s2/s1 + s1/s2 - 1) + (m1 - m2)^2 / (2 s2).
    variance_part = 0.5 * (np.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1)
    expected = (variance_part + mean_coef / sigma2 * squared_error) / np.log(2)
    got = objectives.vlb_term_bpd(diffusion, noise + eps_error, x_start, x_t, t,
                                  variance_type=variance_type, clip_denoised=False)
    np.testing.assert_allclose(got, expected, rtol=2e-4)

  abar_last = alphas_cumprod[-1]
  x = np.asarray(x_start, np.float64)
  prior = 0.5 * (abar_last * x ** 2 + (1 - abar_last) - 1 - np.log(1 - abar_last))
  np.testing.assert_allclose(objectives.prior_bpd(diffusion, x_start),
                             prior.mean(axis=(1, 2, 3)) / np.log(2), rtol=1e-4)


def test_decoder_likelihood_sums_to_one_over_the_256_bins():
  bins = jnp.linspace(-1.0, 1.0, 256)[:, None]
  means = jnp.array([[-1.0, -0.3, 0.0, 0.5, 0.99]])
  log_scales = jnp.array([[-5.0, -3.0, -1.0, 0.0, -2.0]])
  probabilities = jnp.exp(diffusion_lib.discretized_gaussian_log_likelihood(bins, means, log_scales))
  np.testing.assert_allclose(jnp.sum(probabilities, axis=0), np.ones(5), atol=1e-5)


@pytest.fixture(scope="module")
def learned_variance_setup():
  config = _small_config()
  config.diffusion.variance_type = "learned_range"
  config.training.loss = "hybrid"
  return (config,) + _tiny_model_and_params(config)


def test_bits_per_dim_sums_the_prior_and_every_term(learned_variance_setup):
  config, model, params = learned_variance_setup
  diffusion = builders.build_diffusion(config)
  x_start, _ = _batch(config)
  result = jax.jit(lambda x: objectives.bits_per_dim(
      diffusion, builders.make_model_fn(model, params), x, jax.random.key(0),
      variance_type="learned_range"))(x_start)
  assert result["terms"].shape == (BATCH, config.diffusion.num_timesteps)
  np.testing.assert_allclose(result["total"], result["terms"].sum(1) + result["prior"], rtol=1e-5)
  assert np.all(np.isfinite(result["total"])) and np.all(result["terms"] >= 0)


# --- Learned variance ---------------------------------------------------------------------------

def test_learned_variance_output_shapes_and_bounds(learned_variance_setup):
  config, model, params = learned_variance_setup
  diffusion = builders.build_diffusion(config)
  x_start, t = _batch(config)
  output = jax.jit(model.apply)({"params": params}, x_start, t)
  assert output.shape == x_start.shape[:3] + (2 * config.data.num_channels,)

  # v in [-1, 1] (its ends and between) spans exactly [beta-tilde_t, beta_t].
  eps, _ = jnp.split(output, 2, axis=-1)
  for v_raw in (-jnp.ones_like(eps), jnp.ones_like(eps),
                jax.random.uniform(jax.random.key(1), eps.shape, minval=-1, maxval=1)):
    mean, log_variance, _, _ = diffusion_lib.p_mean_variance(
        diffusion, jnp.concatenate([eps, v_raw], -1), x_start, t, variance_type="learned_range")
    assert mean.shape == x_start.shape and log_variance.shape == x_start.shape
    low = diffusion_lib.extract(diffusion.posterior_log_variance_clipped, t, x_start.shape)
    high = diffusion_lib.extract(jnp.log(diffusion.betas), t, x_start.shape)
    assert np.all(log_variance >= low - 1e-6) and np.all(log_variance <= high + 1e-6)


def test_hybrid_loss_trains_the_mean_with_l_simple_only():
  diffusion = _diffusion()
  x_start = jax.random.uniform(jax.random.key(0), (BATCH, 4, 4, 1), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(1), x_start.shape)
  t = jnp.array([0, 3, 10, 19])

  def loss(eps, v, loss_fn):
    model_fn = lambda x_t, t: jnp.concatenate([x_t * 0 + eps, x_t * 0 + v], -1)
    return jnp.sum(loss_fn(model_fn))

  hybrid = lambda fn: objectives.hybrid_loss(diffusion, fn, x_start, t, noise)
  simple = lambda fn: objectives.l_simple(diffusion, fn, x_start, t, noise, "learned_range")
  eps, v = jnp.full((1, 4, 4, 1), 0.3), jnp.full((1, 4, 4, 1), 0.2)
  np.testing.assert_allclose(jax.grad(loss)(eps, v, hybrid), jax.grad(loss)(eps, v, simple),
                             rtol=1e-6)
  assert np.any(jax.grad(loss, argnums=1)(eps, v, hybrid) != 0)  # the vlb trains the variance


# --- Architecture presets ---------------------------------------------------------------------

EXPECTED_PARAMETERS = {  # CIFAR-10, 32x32x3, fixed variance
    "Default": 35_746_307, "DeepRes1": 24_275_587, "ShallowRes2": 25_838_595,
    "ShallowRes1": 17_714_563, "MBConv64": 12_050_611, "MBConv96": 26_904_843,
}


def test_preset_parameter_counts():
  config = config_lib.default_config()
  for name, expected in EXPECTED_PARAMETERS.items():
    config.model.preset = name
    config_lib.validate(config)
    shapes = jax.eval_shape(lambda: builders.init_params(builders.build_model(config), config,
                                                          jax.random.key(0)))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == expected, name


# Compiling a 3- or 4-level network with its gradient takes a minute on a busy CPU: the default
# run covers the MBConv block alone (residual blocks run in every other test) and all six
# presets' shapes (the count test above); `-m slow` runs every preset forward and backward.
def test_mbconv_block_forward_backward_and_shape():
  block = layers.MBConvBlock(out_ch=8, num_groups=2)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  temb = jax.random.normal(jax.random.key(1), (2, 16))
  params = block.init(jax.random.key(2), x, temb, train=False)["params"]
  # Expansion 4 of the input channels, squeeze-excitation 0.25 of them, depthwise 3x3.
  assert params["expand"]["Dense_0"]["kernel"].shape == (4, 16)
  assert params["se"]["reduce"]["Dense_0"]["kernel"].shape == (16, 1)
  assert params["depthwise"]["kernel"].shape == (3, 3, 1, 16)
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: jnp.mean(block.apply({"params": p}, x, temb, train=False) ** 2)))(params)
  assert block.apply({"params": params}, x, temb, train=False).shape == (2, 4, 4, 8)
  assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_preset_builds_and_runs_forward_and_backward(name):
  """Each preset's topology (block type, levels, blocks per level), 16x narrower on 8x8 images."""
  config = tiny_config()
  config.model.preset = name
  config.model.attn_resolutions = (4,)
  config_lib.validate(config)  # writes the preset's fields into config.model
  config.model.preset = ""
  config.model.ch //= 16
  config.model.num_groups = 2
  model = builders.build_model(config)
  assert model.block_type == presets.PRESETS[name]["block_type"]
  assert len(model.ch_mult) == len(presets.PRESETS[name]["ch_mult"])
  x_start, t = _batch(config)

  @jax.jit
  def init_forward_backward():
    params = model.init(jax.random.key(0), x_start, t)["params"]
    return jax.value_and_grad(lambda p: jnp.mean(model.apply({"params": p}, x_start, t) ** 2))(params)
  loss, grads = init_forward_backward()
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
