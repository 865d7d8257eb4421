"""Audio: DiffWave's layout and size, WAV I/O, the samplers on waveforms [B, L, 1], the SC09
classifier metric."""

import json
import os

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io.wavfile
from flax import traverse_util

from conftest import REPO, SHARED_DATA, requires_shared_data
from jdiff import audio
from jdiff import builders
from jdiff import conditioning
from jdiff import config_lib
from jdiff.cpu import convolutions as cpu_convolutions
from jdiff import diffusion as diffusion_lib
from jdiff import parallel
from jdiff import sampling
from jdiff import schedules
from jdiff.errors import ConfigError, DataError, EvaluationError
from jdiff.models import diffwave

FULL = os.path.join(REPO, "configs", "sc09_diffwave.py")
SC09_SAMPLE = os.path.join(SHARED_DATA, "sc09", "sc09_sample.tar.gz")


def _tiny_model(**kwargs):
  settings = dict(residual_channels=8, skip_channels=6, num_layers=3, dilation_cycle=2,
                  embed_dims=(16, 32, 32))
  return diffwave.DiffWave(**dict(settings, **kwargs))


# ------------------------------------------------------------------------------------------------
# Model


def test_full_config_has_diffwaves_parameter_count():
  config = config_lib.load_config(FULL)
  assert builders.parameter_count(config) == 24_071_681
  config.diffwave.weight_norm = False
  assert builders.parameter_count(config) == 24_034_305


def test_shapes_and_zero_output_at_init():
  model = _tiny_model()
  x, t = jnp.ones((2, 64, 1)), jnp.array([0.0, 17.5])
  params = model.init(jax.random.key(0), x, t, method=model.init_all_depths)["params"]
  out = model.apply({"params": params}, x, t)
  assert out.shape == (2, 64, 1) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)  # zero-initialised output conv (reference ZeroConv1d)
  # Dilations 1, 2, 1 (cycle 2), skip channels 6.
  assert params["residual_1"]["skip_conv"]["conv"]["kernel"].shape == (1, 8, 6)


def test_mel_conditioning_upsamples_256x():
  model = _tiny_model(n_mels=5)
  x, t, mel = jnp.ones((2, 512, 1)), jnp.zeros((2,)), jnp.ones((2, 2, 5))
  upsampled = diffwave.MelUpsampler().init_with_output(jax.random.key(0), mel)[0]
  assert upsampled.shape == (2, 512, 5)
  params = model.init(jax.random.key(0), x, t, method=model.init_all_depths)["params"]
  assert model.apply({"params": params}, x, t, mel=mel).shape == (2, 512, 1)
  with pytest.raises(ValueError, match="mel is missing"):
    model.apply({"params": params}, x, t)


@pytest.mark.parametrize("hop", [16, 64, 256])
def test_mel_upsampler_places_each_frame_where_torchs_transposed_convs_do(hop):
  """hop = s * s: two ConvTranspose (kernel 2s, stride s, torch padding s/2); frame f of the mel
  reaches exactly samples [(fs - s/2) s - s/2, (fs + 3s/2 - 1) s + 3s/2 - 1] (torch's output
  index i * stride - padding + k, twice), and the output is hop times as long."""
  stride, frames, frame = int(round(hop ** 0.5)), 6, 2
  impulse = jnp.zeros((1, frames, 3)).at[0, frame, 1].set(1.0)
  upsampler = diffwave.MelUpsampler(hop)
  variables = upsampler.init(jax.random.key(0), impulse)
  assert variables["params"]["upsample_0"]["kernel"].shape == (3, 2 * stride, 1, 1)
  # Random biases would light up every sample; zero them (their init) and random kernels.
  out = np.asarray(upsampler.apply(variables, impulse))
  assert out.shape == (1, frames * hop, 3)
  reached = np.flatnonzero(np.abs(out[0, :, 1]) > 0)
  first = (frame * stride - stride // 2) * stride - stride // 2
  last = (frame * stride + 3 * stride // 2 - 1) * stride + 3 * stride // 2 - 1
  assert (reached[0], reached[-1]) == (first, last)


def test_mel_stft_fields_are_validated():
  config = _vocoder_config()
  for field, value, allowed in [("mel_hop", 128, "s \\* s with s even"),
                                ("mel_hop", 9, "s \\* s with s even"),
                                ("mel_n_fft", 128, ">= diffwave.mel_hop \\(256\\)")]:
    bad = config.copy_and_resolve_references()
    bad.diffwave[field] = value
    with pytest.raises(ConfigError, match=f"diffwave.{field}={value}: must be {allowed}"):
      config_lib.validate(bad)
  good = config.copy_and_resolve_references()
  good.diffwave.mel_hop, good.data.audio_length = 64, 320
  config_lib.validate(good)


def test_gated_unit_value_and_gradient_against_finite_differences():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(3, 5, 8)).astype(np.float32)
  np.testing.assert_allclose(diffwave.gated_unit(h),
                             np.tanh(h[..., :4]) * (1 / (1 + np.exp(-h[..., 4:]))), rtol=1e-5)
  weights = rng.normal(size=(3, 5, 4)).astype(np.float32)
  f = lambda h: jnp.sum(diffwave.gated_unit(h) * weights)
  grad = np.asarray(jax.grad(f)(h))
  eps = 1e-2
  numeric = np.zeros_like(h)
  for index in np.ndindex(h.shape):
    up, down = h.copy(), h.copy()
    up[index] += eps
    down[index] -= eps
    numeric[index] = (float(f(up)) - float(f(down))) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, atol=2e-3)


@pytest.mark.parametrize("weight_norm", [True, False])
def test_gradients_match_with_xla_and_matmul_filter_gradients(weight_norm):
  """jdiff/cpu/convolutions.py's filter gradient in every conv (dilated, 1x1, weight-normed, mel): the same
  loss gradients as XLA's own, to float rounding."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 512, 1)), jnp.float32)
  eps = jnp.asarray(rng.normal(size=(2, 512, 1)), jnp.float32)
  t, mel = jnp.array([3.0, 150.5]), jnp.asarray(rng.normal(size=(2, 2, 5)), jnp.float32)
  grads = {}
  convolutions = {"xla": lax.conv_general_dilated,
                  "matmul": cpu_convolutions.conv_general_dilated}
  for choice in ("xla", "matmul"):
    model = _tiny_model(n_mels=5, weight_norm=weight_norm, convolution=convolutions[choice])
    params = model.init(jax.random.key(0), x, t, method=model.init_all_depths)["params"]
    # A non-zero output conv, so that every layer's gradient is non-zero.
    params["out_conv"]["conv"]["kernel"] = jnp.full_like(params["out_conv"]["conv"]["kernel"], 0.3)
    loss = lambda p: jnp.mean((model.apply({"params": p}, x, t, mel=mel) - eps) ** 2)
    grads[choice] = jax.grad(loss)(params)
  flat_xla = traverse_util.flatten_dict(grads["xla"])
  flat_matmul = traverse_util.flatten_dict(grads["matmul"])
  assert flat_xla.keys() == flat_matmul.keys()
  kernels = [k for k in flat_xla if k[-1] == "kernel" and "dilated_conv" in k]
  assert kernels and all(float(jnp.max(jnp.abs(flat_xla[k]))) > 0 for k in kernels)
  for key, value in flat_xla.items():
    np.testing.assert_allclose(flat_matmul[key], value, rtol=1e-4, atol=1e-6, err_msg=str(key))


def test_weight_norm_gain_is_the_per_output_channel_norm():
  """W = g v / ||v||, the norm over (kernel, input channels) per output channel (torch dim=0)."""
  conv = diffwave.Conv1x(4, kernel_size=3, dilation=2)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 16, 3)), jnp.float32)
  params = conv.init(jax.random.key(0), x)["params"]
  gains = jnp.arange(1.0, 5.0)
  params["weight_norm"]["conv/kernel/scale"] = gains
  v = params["conv"]["kernel"]
  weight = np.asarray(gains * v / jnp.sqrt(jnp.sum(v ** 2, axis=(0, 1))))
  padded = np.pad(np.asarray(x[0]), ((2, 2), (0, 0)))
  expected = sum(padded[2 * k:2 * k + 16] @ weight[k] for k in range(3))
  np.testing.assert_allclose(conv.apply({"params": params}, x)[0], expected, atol=1e-5)


def test_audio_config_validation_one_line_errors():
  config = config_lib.load_config(FULL + ":tiny")
  for field, value, words in (("model.kind", "unet", "'diffwave' with data.kind='audio'"),
                              ("data.random_flip", True, "false with data.kind='audio'"),
                              ("data.audio_length", 0, "a positive integer"),
                              ("data.source", "cifar10", "with data.kind='audio'"),
                              ("depth.training", "random", "'full' with depth.power=0")):
    bad = config.copy_and_resolve_references()
    section, name = field.split(".")
    bad[section][name] = value
    with pytest.raises(ConfigError, match=words) as error:
      config_lib.validate(bad)
    assert "\n" not in str(error.value) and field in str(error.value)


def test_one_train_step_of_the_tiny_config():
  from jdiff.drivers import train  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(FULL + ":tiny")
  model, state, train_step = train.build_fresh_training(config, parallel.make_mesh())
  waves = np.random.default_rng(0).integers(-8000, 8000, (config.training.batch_size, 1024, 1))
  old_params = jax.device_get(state.params)  # the step donates the state
  new_state, metrics = train_step(state, waves.astype(np.int16))
  assert np.isfinite(float(metrics["loss"])) and 0.5 < float(metrics["loss"]) < 2.0
  assert int(new_state.step) == 1
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params, old_params)
  assert max(jax.tree.leaves(moved)) > 0
  del model


def _generated_clips(folder, words=("zero", "one"), per_word=4, length=512, rate=4000):
  """A folder of 16-bit WAVs in word folders (tones of different pitch): data without a download."""
  rng = np.random.default_rng(0)
  for w, word in enumerate(words):
    for k in range(per_word):
      seconds = np.arange(length) / rate
      wave = 0.5 * np.sin(2 * np.pi * (200 + 100 * w + 20 * k) * seconds)
      wave += 0.01 * rng.standard_normal(length)
      audio.write_wav(os.path.join(folder, word, f"s{k}_nohash_0.wav"), rate, wave)
  return str(folder)


def _vocoder_config(data_folder=None):
  """The tiny audio config as a mel-conditioned vocoder; with data_folder, on clips generated
  there (no download)."""
  config = config_lib.load_config(os.path.join(REPO, "configs", "sc09_cpu.py") + ":tiny")
  config.diffwave.n_mels = 5
  config.data.audio_length = 512
  if data_folder is not None:
    config.data.update(dict(source="folder", path=_generated_clips(
        data_folder, rate=config.data.sample_rate)))
  return config


def test_cpu_vocoder_config_runs_on_its_clip_length():
  """configs/sc09_vocoder_cpu.py: 80 mel bands of 4,096-sample clips condition every sample."""
  config = config_lib.load_config(os.path.join(REPO, "configs", "sc09_vocoder_cpu.py"))
  config_lib.validate(config)
  assert config.diffwave.n_mels == 80 and config.data.sample_rate == 4000
  assert (config.diffwave.mel_hop, config.diffwave.mel_n_fft) == (64, 256)  # 16 ms, 64 ms
  model = builders.build_model(config)
  waves = jnp.sin(jnp.arange(4096.0) * 0.3)[None, :, None] * jnp.linspace(0, 1, 4096)[None, :, None]
  mel = conditioning.mel_of(config, waves)
  assert mel.shape == (1, 64, 80)
  np.testing.assert_allclose(mel, audio.mel_spectrogram(waves, 4000, 256, 64, 80), atol=1e-6)
  params = builders.new_params(model, config, 0)
  out = model.apply({"params": params}, waves, jnp.array([7.0]), mel=mel)
  assert out.shape == (1, 4096, 1) and out.dtype == jnp.float32


def test_vocoder_train_step_feeds_each_clips_mel():
  """diffwave.n_mels > 0: the step conditions on the mel of each clean clip (conditioning.mel_of)."""
  from jdiff.drivers import train  # pylint: disable=g-import-not-at-top
  config = _vocoder_config()
  config_lib.validate(config)
  _, state, train_step = train.build_fresh_training(config, parallel.make_mesh())
  waves = np.random.default_rng(0).integers(-8000, 8000, (config.training.batch_size, 512, 1))
  mel = conditioning.mel_of(config, audio.to_float(waves.astype(np.int16)))
  assert mel.shape == (config.training.batch_size, 2, 5)
  np.testing.assert_allclose(mel, audio.mel_spectrogram(audio.to_float(waves), 16000, 1024, 256, 5),
                             atol=1e-6)
  old_params = jax.device_get(state.params)
  # A non-zero output conv (it starts at zero, which zeroes every other gradient of step 1).
  old_params["out_conv"]["conv"]["kernel"] = np.full_like(old_params["out_conv"]["conv"]["kernel"],
                                                          0.3)
  state = state.replace(params=jax.tree.map(jnp.asarray, old_params))
  new_state, metrics = train_step(state, waves.astype(np.int16))
  assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1
  # The mel's path (upsampler, per-layer mel_conv) got a gradient and moved.
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       new_state.params["residual_0"]["mel_conv"], old_params["residual_0"]["mel_conv"])
  assert max(jax.tree.leaves(moved)) > 0
  bad = config.copy_and_resolve_references()
  bad.data.audio_length = 500
  with pytest.raises(ConfigError, match=r"data.audio_length.*multiple of diffwave.mel_hop \(256\)"):
    config_lib.validate(bad)


def test_vocoder_samples_from_the_mels_of_given_clips(tmp_path):
  from jdiff.drivers import sample, train  # pylint: disable=g-import-not-at-top
  config = _vocoder_config(tmp_path / "clips")
  config.training.update(dict(num_steps=1, checkpoint_every=1))
  config.sampling.update(dict(name="fastdpm", fastdpm_kind="var", steps=3, schedule="quadratic",
                              num_samples=6, batch_size=4))
  train.train(config, str(tmp_path))
  cond = sample.conditioning_of(config, 6, 4)
  assert list(cond) == ["mel"]
  mels = cond["mel"]
  clips = conditioning.conditioning_clips(config, 8)
  assert mels.shape == (8, 2, 5)  # whole batches
  np.testing.assert_allclose(mels, conditioning.mel_of(config, audio.to_float(clips)), atol=1e-6)
  sample.sample(config, str(tmp_path))
  out = tmp_path / "samples"
  assert np.load(out / "samples.npz")["images"].shape == (6, 512, 1)
  assert len(list(out.glob("sample_*.wav"))) == 6 and (out / "given_clips.png").exists()
  # Different mels, different samples (same noise): the sampler passes them to the model.
  model = builders.build_model(config)
  params, _ = builders.restore_ema_params(config, str(tmp_path), model, parallel.make_mesh())
  params = dict(params, out_conv={"conv": {"kernel": jnp.ones((1, 8, 1)), "bias": jnp.zeros(1)}})
  sampler, _ = builders.build_sampler(config, builders.build_diffusion(config))
  sample_fn = builders.make_sample_fn(sampler, model, parallel.make_mesh(), (512, 1), 4)
  first = sample_fn(params, jax.random.key(0), {"mel": jnp.asarray(mels[:4])})
  second = sample_fn(params, jax.random.key(0), {"mel": jnp.asarray(mels[4:8])})
  assert first.shape == (4, 512, 1) and float(jnp.max(jnp.abs(first - second))) > 0


# ------------------------------------------------------------------------------------------------
# Samplers on [B, L, 1]: data ~ N(0, s^2) has the closed-form eps-predictor
# E[eps | x_t] = sqrt(1 - a) x_t / (a s^2 + 1 - a), a = abar(t) (continuous in t).

SCALE, T, BETAS = 0.5, 200, (1e-4, 0.02)


def _log_abar_jnp(t):
  """FastDPM's continuous log abar (Stirling form, as schedules.continuous_log_alpha_bar)."""
  d = (BETAS[1] - BETAS[0]) / (T - 1)
  c, n = (1 - BETAS[0]) / d, t + 1.0
  return (n * jnp.log1p(-BETAS[0]) - n - (c - n + 0.5) * jnp.log1p(-n / c)
          + (1.0 / c - 1.0 / (c - n)) / 12.0)


def _exact_eps(x, t):
  a = jnp.exp(_log_abar_jnp(t))[:, None, None]
  return jnp.sqrt(1 - a) * x / (a * SCALE ** 2 + 1 - a)


def _predictor(log_a):
  """(A, B): x0_hat = A x, eps_hat = B x of the exact model at level a."""
  a = np.exp(log_a)
  v = a * SCALE ** 2 + 1 - a
  return np.sqrt(a) * SCALE ** 2 / v, np.sqrt(1 - a) / v


def _generalized_variance(log_levels, kappa):
  """Var of x_0 after the DDIM / FastDPM update (x' = sqrt(a') x0 + sqrt(1 - a' - sig^2) eps +
  sig z, sig^2 = kappa^2 (1 - a') / (1 - a) (1 - a / a')), from x_T ~ N(0, 1), in numpy."""
  var = 1.0
  levels = list(np.asarray(log_levels, np.float64)[::-1]) + [0.0]
  for log_a, log_next in zip(levels[:-1], levels[1:]):
    a, a_next = np.exp(log_a), np.exp(log_next)
    sig2 = kappa ** 2 * (1 - a_next) / (1 - a) * (1 - a / a_next)
    x0_coef, eps_coef = _predictor(log_a)
    var = (np.sqrt(a_next) * x0_coef + np.sqrt(1 - a_next - sig2) * eps_coef) ** 2 * var + sig2
  return var


def _ancestral_variance():
  """Algorithm 2 with sigma_t^2 = beta_t (fixedlarge), posterior-mean coefficients, in numpy."""
  betas = schedules.linear_betas(T, *BETAS)
  abar = np.cumprod(1 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  var = 1.0
  for t in range(T - 1, -1, -1):
    eps_coef = _predictor(_log_abar_np(t))[1]
    x0_from_x = (1 - np.sqrt(1 - abar[t]) * eps_coef) / np.sqrt(abar[t])
    coef1 = betas[t] * np.sqrt(abar_prev[t]) / (1 - abar[t])
    coef2 = (1 - abar_prev[t]) * np.sqrt(1 - betas[t]) / (1 - abar[t])
    var = (coef1 * x0_from_x + coef2) ** 2 * var + (betas[t] if t > 0 else 0.0)
  return var


def _log_abar_np(t):
  return float(schedules.continuous_log_alpha_bar(t, *BETAS, T))


def _sample_variance(plan):
  x_T = jax.random.normal(jax.random.key(0), (4, 4096, 1))
  x0 = jax.jit(lambda x: sampling.run_plan(plan, _exact_eps, x, jax.random.key(1)))(x_T)
  assert x0.shape == (4, 4096, 1)
  return float(jnp.var(x0))


@pytest.mark.parametrize("kind,kappa", [("var", 1.0), ("var", 0.0), ("step", 1.0), ("step", 0.0)])
def test_fastdpm_on_waveforms_matches_the_closed_form_variance(kind, kappa):
  betas = schedules.linear_betas(T, *BETAS)
  plan = sampling.fastdpm_plan(betas, 10, kind=kind, schedule="quadratic", kappa=kappa,
                               clip_denoised=False)
  if kind == "var":
    log_levels = schedules.var_steps(*BETAS, T, 10, "quadratic")[1]
  else:
    log_levels = np.cumsum(np.log1p(-betas))[schedules.step_schedule(T, 10, "quadratic")]
  expected = _generalized_variance(log_levels, kappa)
  assert _sample_variance(plan) == pytest.approx(expected, rel=0.04)


def test_ancestral_on_waveforms_matches_the_closed_form_variance():
  diffusion = diffusion_lib.GaussianDiffusion.from_betas(schedules.linear_betas(T, *BETAS))
  plan = sampling.ancestral_plan(diffusion, clip_denoised=False)
  expected = _ancestral_variance()
  assert expected == pytest.approx(SCALE ** 2, rel=0.1)  # T = 200 exact-score DDPM: near s^2
  assert _sample_variance(plan) == pytest.approx(expected, rel=0.04)


# ------------------------------------------------------------------------------------------------
# WAV files


def test_wav_round_trip_is_exact_for_int16(tmp_path):
  wave = np.random.default_rng(0).integers(-32768, 32768, 1000).astype(np.int16)
  path = audio.write_wav(str(tmp_path / "a.wav"), 16000, wave)
  rate, read = audio.read_wav(path)
  assert rate == 16000 and read.dtype == np.int16
  np.testing.assert_array_equal(read, wave)
  np.testing.assert_array_equal(audio.to_int16(audio.to_float(wave)), wave)


def test_folder_resamples_pads_and_refuses(tmp_path):
  t = np.arange(8000) / 8000.0
  tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
  audio.write_wav(str(tmp_path / "one" / "a.wav"), 8000, tone)          # 1 s at 8 kHz
  audio.write_wav(str(tmp_path / "two" / "b.wav"), 16000, tone[:4000])  # 0.25 s at 16 kHz
  waves, words = audio.read_folder(str(tmp_path), sample_rate=16000, length=16000)
  assert waves.shape == (2, 16000, 1) and waves.dtype == np.int16 and words == ["one", "two"]
  # The 8 kHz tone resampled to 16 kHz keeps its frequency: 440 cycles in 16000 samples.
  spectrum = np.abs(np.fft.rfft(waves[0, :, 0].astype(np.float64)))
  assert np.argmax(spectrum) == 440
  np.testing.assert_array_equal(waves[1, 4000:, 0], 0)  # padded at the end
  with pytest.raises(DataError, match="sample rate 8000 Hz; config.data.sample_rate is 16000"):
    audio.read_folder(str(tmp_path), sample_rate=16000, length=16000, allow_resample=False)
  scipy.io.wavfile.write(str(tmp_path / "one" / "c.wav"), 16000, np.zeros(10, np.float32))
  with pytest.raises(DataError, match="expected 16-bit PCM") as error:
    audio.read_folder(str(tmp_path), sample_rate=16000, length=16000)
  assert "\n" not in str(error.value)


def test_peak_normalize_scales_each_clip_to_the_peak():
  waves = np.zeros((3, 5, 1), np.int16)
  waves[0, :, 0] = [100, -200, 50, 0, 0]
  waves[1, :, 0] = [-16000, 8000, 0, 1, 2]
  normalized = audio.normalize_peaks(waves, 0.5)
  np.testing.assert_array_equal(normalized[0, :, 0], np.round(np.array([100, -200, 50, 0, 0])
                                                               * 0.5 * 32767 / 200))
  np.testing.assert_array_equal(normalized[1, :2, 0], [-16384, 8192])
  np.testing.assert_array_equal(normalized[2], 0)  # silence stays silence
  config = config_lib.load_config(FULL + ":tiny")
  config.data.peak_normalize = 1.5
  with pytest.raises(ConfigError, match="data.peak_normalize.*in \\[0, 1\\]"):
    config_lib.validate(config)


@requires_shared_data("sc09", "sc09_sample.tar.gz")
def test_sc09_archive_reads_100_clips_of_ten_digits():
  waves, words = audio.read_archive(SC09_SAMPLE, words=audio.DIGITS)
  assert waves.shape == (100, 16000, 1) and waves.dtype == np.int16
  assert sorted(set(words)) == sorted(audio.DIGITS) and words.count("seven") == 10
  assert np.abs(waves).max() > 1000  # real speech, not silence


def test_mel_spectrogram_of_a_tone_peaks_at_its_band():
  rate = 16000
  tone = np.sin(2 * np.pi * 1000 * np.arange(rate) / rate)[None]
  mel = np.asarray(audio.mel_spectrogram(tone, sample_rate=rate, n_fft=512, hop=128, n_mels=40))
  assert mel.shape == (1, 125, 40) and 0.0 <= mel.min() and mel.max() <= 1.0
  centres = audio.mel_to_hz(np.linspace(audio.hz_to_mel(20.0), audio.hz_to_mel(8000.0), 42))[1:-1]
  assert abs(centres[np.argmax(mel[0, 60])] - 1000) < 150


# ------------------------------------------------------------------------------------------------
# The classifier metric


@requires_shared_data("sc09", "sc09_sample.tar.gz")
def test_classifier_fd_ranks_real_clips_above_noise(tmp_path):
  """The metric's pipeline on a briefly trained classifier (10 steps: features, not accuracy)."""
  from jdiff.evaluation import speech_classifier  # pylint: disable=g-import-not-at-top
  settings = dict(speech_classifier.TRAINING_SETTINGS, steps=10)
  scorer = speech_classifier.Scorer(SC09_SAMPLE, directory=str(tmp_path), settings=settings)
  assert scorer.num_train == 80 and scorer.num_held_out == 20
  assert 0.0 <= scorer.held_out_accuracy <= 1.0
  anchors = scorer.anchors(20)
  fd = speech_classifier.FD_NAME
  assert np.isfinite(anchors["real"][fd]) and anchors["noise"][fd] > 2 * anchors["real"][fd]
  # Real clips at 16 kHz go through the same resampling as samples.
  waves, _ = audio.read_archive(SC09_SAMPLE, words=audio.DIGITS)
  assert scorer(waves[1::2][:20], 16000)[fd] < anchors["noise"][fd]
  # Voicing needs no classifier: real words are periodic, noise is not (measured 0.82 / 0.12).
  voicing = speech_classifier.VOICING_NAME
  assert anchors["real"][voicing] > 0.7 and anchors["noise"][voicing] < 0.2


@pytest.mark.slow
@requires_shared_data("sc09", "sc09_sample.tar.gz")
def test_classifier_held_out_accuracy_beats_chance(tmp_path):
  """The real TRAINING_SETTINGS on the 80 shared training clips (measured: 0.50; chance 0.10)."""
  from jdiff.evaluation import speech_classifier  # pylint: disable=g-import-not-at-top
  scorer = speech_classifier.Scorer(SC09_SAMPLE, directory=str(tmp_path))
  assert scorer.held_out_accuracy >= 0.3


@requires_shared_data("sc09", "sc09_sample.tar.gz")
def test_evaluate_scores_the_classifier_metric_with_anchors(tmp_path, monkeypatch):
  """--mode=evaluate on the tiny audio config: sc09_fd / sc09_is of the samples and of the real
  and noise anchors, a waveform picture (classifier trained 10 steps: the pipeline, not a score)."""
  from jdiff.drivers import evaluate, train  # pylint: disable=g-import-not-at-top
  from jdiff.evaluation import speech_classifier  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("JDIFF_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(speech_classifier, "TRAINING_SETTINGS",
                      dict(speech_classifier.TRAINING_SETTINGS, steps=10))
  config = config_lib.load_config(os.path.join(REPO, "configs", "sc09_cpu.py") + ":tiny")
  config.data.path = SC09_SAMPLE  # a local copy: no download
  config.training.update(dict(num_steps=2, checkpoint_every=2))
  config.sampling.update(dict(name="fastdpm", fastdpm_kind="var", steps=3, schedule="quadratic"))
  config.evaluation.num_samples = 6
  train.train(config, str(tmp_path))
  results = evaluate.evaluate(config, str(tmp_path))
  assert results["num_samples"] == 6 and results["sc09_real_anchor_clips"] == 6
  for key in ("sc09_fd", "sc09_is", "sc09_fd_real_anchor", "sc09_fd_noise_anchor", "voicing"):
    assert np.isfinite(results[key]), key
  assert results["sc09_fd_noise_anchor"] > results["sc09_fd_real_anchor"]
  assert results["voicing_real_anchor"] > results["voicing_noise_anchor"] + 0.5
  assert 1.0 <= results["sc09_is"] <= 10.0
  with open(os.path.join(os.path.dirname(results["grid"]), "metrics.json")) as f:
    assert json.load(f)["sc09_fd"] == results["sc09_fd"]
  assert results["grid"].endswith("waveforms.png") and os.path.getsize(results["grid"]) > 1000
  config.evaluation.sc09_reference = str(tmp_path / "absent.tar.gz")
  with pytest.raises(EvaluationError, match="sc09_reference=.*absent.tar.gz") as error:
    evaluate.sc09_scorer(config)
  assert "\n" not in str(error.value)
  config.evaluation.sc09_reference, config.data.source, config.data.path = "", "sc09", ""
  with pytest.raises(EvaluationError, match="sc09_reference='': sc09_fd needs labelled"):
    evaluate.sc09_reference(config)


@requires_shared_data("sc09", "sc09_sample.tar.gz")
@pytest.mark.parametrize("vocoder", [True, False])
def test_audio_table_rows(tmp_path, monkeypatch, vocoder):
  """jdiff.tools.audio_table on the tiny unconditional model and the tiny vocoder: the ancestral
  row, FastDPM's 2 x 2 grid per S (NFE = S), the anchors, and the JSON; a vocoder's samplers
  conditioned on the given clips' mels."""
  from jdiff.drivers import train  # pylint: disable=g-import-not-at-top
  from jdiff.evaluation import speech_classifier  # pylint: disable=g-import-not-at-top
  from jdiff.tools import audio_table  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("JDIFF_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(speech_classifier, "TRAINING_SETTINGS",
                      dict(speech_classifier.TRAINING_SETTINGS, steps=10))
  config = (_vocoder_config() if vocoder else
            config_lib.load_config(os.path.join(REPO, "configs", "sc09_cpu.py") + ":tiny"))
  config.data.path = SC09_SAMPLE  # data.source stays sc09: its digits, read here, no download
  config.training.update(dict(num_steps=1, checkpoint_every=1))
  train.train(config, str(tmp_path))
  results = audio_table.run(config, str(tmp_path), SC09_SAMPLE, num_samples=4, rounds=2,
                            steps=(2,), schedule="quadratic")
  labels = [row["sampler"] for row in results["rows"]]
  assert labels == [f"ancestral T={config.diffusion.num_timesteps}", "S=2 VAR DDPM-rev",
                    "S=2 VAR DDIM-rev", "S=2 STEP DDPM-rev", "S=2 STEP DDIM-rev",
                    "anchor: real clips", "anchor: noise clips"]
  assert [row["network_evaluations"] for row in results["rows"][:5]] == [
      config.diffusion.num_timesteps, 2, 2, 2, 2]
  conditioning = "mels of the first 4 clips" if vocoder else "none (unconditional)"
  assert results["conditioning"].startswith(conditioning)
  for row in results["rows"]:
    assert np.isfinite(row[speech_classifier.FD_NAME]), row["sampler"]
  for row in results["rows"][:5]:
    assert row["seconds_per_clip"] > 0 and row["spread_s"] >= 0
  with open(tmp_path / "audio_table.json") as f:
    assert json.load(f)["rows"][1] == results["rows"][1]
  assert f"conditioning: {conditioning}" in audio_table.print_table(results)


def test_speech_commands_archive_splits_by_its_lists(tmp_path):
  import tarfile  # pylint: disable=g-import-not-at-top
  root = tmp_path / "sc"
  for word in ("zero", "one", "left"):
    for speaker in ("a", "b", "c"):
      audio.write_wav(str(root / word / f"{speaker}_nohash_0.wav"), 16000,
                      np.full(100, ord(speaker), np.int16))
  (root / "validation_list.txt").write_text("zero/b_nohash_0.wav\none/b_nohash_0.wav\n")
  (root / "testing_list.txt").write_text("zero/c_nohash_0.wav\n")
  archive = str(tmp_path / "sc.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(str(root), arcname=".")
  splits = {split: audio.read_archive(archive, words=("zero", "one"), split=split, length=100)
            for split in ("train", "validation", "test")}
  assert splits["train"][1] == ["one", "one", "zero"]  # sorted paths; "left" filtered out
  assert splits["validation"][1] == ["one", "zero"] and splits["test"][1] == ["zero"]
  np.testing.assert_array_equal(splits["test"][0][0, :, 0], ord("c"))


@pytest.mark.slow
@requires_shared_data("sc09", "sc09_sample.tar.gz")
def test_cli_trains_and_samples_wavs_and_a_picture(tmp_path):
  """The tiny CPU config through the CLI: --mode=train, then --mode=sample with FastDPM."""
  from conftest import cli  # pylint: disable=g-import-not-at-top
  common = [f"--config={os.path.join(REPO, 'configs', 'sc09_cpu.py')}:tiny",
            f"--workdir={tmp_path}", f"--config.data.path={SC09_SAMPLE}"]
  assert cli(common + ["--mode=train"]).returncode == 0
  result = cli(common + ["--mode=sample", "--config.sampling.name=fastdpm",
                         "--config.sampling.fastdpm_kind=var", "--config.sampling.steps=5",
                         "--config.sampling.schedule=quadratic", "--config.sampling.kappa=1.0"])
  assert result.returncode == 0, result.stderr[-2000:]
  samples = tmp_path / "samples"
  assert (samples / "waveforms.png").stat().st_size > 1000
  for i in range(4):
    rate, wave = audio.read_wav(str(samples / f"sample_{i:04d}.wav"))
    assert rate == 16000 and wave.shape == (1024,)
  np.testing.assert_array_equal(np.load(samples / "samples.npz")["images"][0, :, 0],
                                audio.read_wav(str(samples / "sample_0000.wav"))[1])


def test_periodicity_of_a_tone_noise_silence_and_one_frame_by_its_formula():
  """audio.periodicity: a 200 Hz tone ~1, white noise low, silence 0, quiet noise below the
  loudness floor ignored; one frame equals the normalised-autocorrelation peak written out."""
  rate = 4000
  n = np.arange(rate)
  tone = 0.5 * np.sin(2 * np.pi * 200.0 * n / rate)
  noise = np.random.default_rng(0).normal(0.0, 0.3, rate)
  quiet_noise_then_tone = np.concatenate([noise[:rate // 2] * 0.01, tone[rate // 2:]])
  result = audio.periodicity(np.stack([tone, noise, np.zeros(rate), quiet_noise_then_tone]), rate)
  assert result[0] > 0.99 and result[1] < 0.3 and result[2] == 0.0 and result[3] > 0.99
  # int16 input, any scale, [N, L, 1]: the same number.
  as_int16 = audio.to_int16(tone[None, :, None] * 0.3)
  np.testing.assert_allclose(audio.periodicity(as_int16, rate), result[:1], atol=1e-3)
  # One 64 ms frame (256 samples at 4 kHz): its mean removed, lags 10 .. 66 (400 .. 60 Hz).
  frame = np.random.default_rng(1).normal(size=256) + np.sin(np.arange(256) * 0.2) + 3.0
  centred = frame - frame.mean()
  head_tail = [(centred[:-lag], centred[lag:]) for lag in range(10, 67)]
  expected = max(np.dot(head, tail) / np.sqrt(np.dot(head, head) * np.dot(tail, tail))
                 for head, tail in head_tail)
  np.testing.assert_allclose(audio.periodicity(frame[None], rate), [expected], rtol=1e-9)
  with pytest.raises(ValueError, match="256-sample frames"):
    audio.periodicity(np.zeros((1, 100)), rate)


def test_vocoder_random_crops_keep_each_mel_frame_over_its_samples():
  """training.crop_mel_frames: clip b's crop is mel frames [f, f + c) and samples [f hop,
  (f + c) hop) for one start f per clip, drawn uniformly from every start that fits."""
  config = _vocoder_config()
  config.diffwave.mel_hop, config.data.audio_length, config.training.crop_mel_frames = 16, 160, 3
  config_lib.validate(config)
  batch, hop, frames = 64, 16, 10
  # Sample n of clip b holds b * 1000 + n; frame f of clip b's "mel" holds b * 1000 + f * hop.
  waves = (np.arange(batch)[:, None] * 1000 + np.arange(frames * hop)[None, :])[..., None]
  mel = np.repeat((np.arange(batch)[:, None] * 1000 + np.arange(frames)[None, :] * hop)[..., None],
                  4, axis=-1)
  crop_waves, crop_cond = conditioning.crop(config, jax.random.key(3),
                                            jnp.asarray(waves, jnp.float32),
                                            {"mel": jnp.asarray(mel, jnp.float32)})
  crop_mel = crop_cond["mel"]
  crop_waves, crop_mel = np.asarray(crop_waves), np.asarray(crop_mel)
  assert crop_waves.shape == (batch, 3 * hop, 1) and crop_mel.shape == (batch, 3, 4)
  starts = (crop_mel[:, 0, 0] - np.arange(batch) * 1000) / hop
  for b, f in enumerate(starts.astype(int)):
    np.testing.assert_array_equal(crop_waves[b, :, 0], waves[b, f * hop:(f + 3) * hop, 0])
    np.testing.assert_array_equal(crop_mel[b], mel[b, f:f + 3])
  assert set(starts.astype(int)) == set(range(frames - 3 + 1))  # every start that fits, no other
  bad = config.copy_and_resolve_references()
  bad.training.crop_mel_frames = 11
  with pytest.raises(ConfigError, match=r"training.crop_mel_frames=11: must be <= 10"):
    config_lib.validate(bad)
  bad = config_lib.load_config(os.path.join(REPO, "configs", "sc09_cpu.py") + ":tiny")
  bad.training.crop_mel_frames = 2
  with pytest.raises(ConfigError, match=r"training.crop_mel_frames=2: must be 0 unless .*mel-cond"):
    config_lib.validate(bad)


def test_vocoder_trains_on_crops_and_resumes_across_the_crop_setting(tmp_path):
  """A cropped train step runs and its loss differs from the whole clip's; the crop changes only
  how it trains, so a checkpoint trained on whole clips resumes on crops."""
  from jdiff.drivers import train  # pylint: disable=g-import-not-at-top
  config = _vocoder_config(tmp_path / "clips")  # 512-sample clips, hop 256: two frames
  config.training.update(dict(num_steps=2, checkpoint_every=1))
  config_lib.validate(config)
  _, state, whole_step = train.build_fresh_training(config, parallel.make_mesh())
  waves = np.random.default_rng(0).integers(-8000, 8000, (config.training.batch_size, 512, 1))
  cropped = config.copy_and_resolve_references()
  cropped.training.crop_mel_frames = 1
  config_lib.validate(cropped)
  _, _, crop_step = train.build_fresh_training(cropped, parallel.make_mesh())
  params = jax.device_get(state.params)
  params["out_conv"]["conv"]["kernel"] = np.full_like(params["out_conv"]["conv"]["kernel"], 0.3)
  start = state.replace(params=jax.tree.map(jnp.asarray, params))
  copy = lambda: jax.tree.map(jnp.array, start)
  _, whole = whole_step(copy(), waves.astype(np.int16))
  _, crop = crop_step(copy(), waves.astype(np.int16))
  assert np.isfinite(float(crop["loss"])) and float(crop["loss"]) != float(whole["loss"])
  train.train(config, str(tmp_path))
  cropped.training.num_steps = 3
  assert int(train.train(cropped, str(tmp_path)).state.step) == 3
