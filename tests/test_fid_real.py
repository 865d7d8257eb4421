"""FID preprocessing conventions (TF1 vs pytorch-fid), weight files without logits, and real
Inception features from the real weights ($JDIFF_TEST_WEIGHTS) on real CIFAR-10 images
($JDIFF_TEST_DATA); those tests skip when either is absent (tests/conftest.py)."""

import os

import numpy as np
import pytest

from conftest import SHARED_DATA, SHARED_WEIGHTS, on_four_devices, requires_shared_data
from conftest import requires_shared_weights
from jdiff import choices, errors
from jdiff.drivers import evaluate
from jdiff.evaluation import inception, metrics, torch_weights

REAL_WEIGHTS_FILE = "fid_inception_2015-12-05_pool3.pth"
REAL_WEIGHTS = os.path.join(SHARED_WEIGHTS, REAL_WEIGHTS_FILE)
DEFAULT = choices.DEFAULT_EVALUATION_METRICS
requires_real_weights = requires_shared_weights(REAL_WEIGHTS_FILE)

# ----------------------------------------------------------------------------------------------
# TF1 resize_bilinear (align_corners=False, no half-pixel centres) vs pytorch-fid's


def _tf1_resize_reference(values, out_size):
  """TF1 resize_bilinear along one axis, written from the kernel's loop (resize_bilinear_op.cc,
  LegacyScaler): in = i * (in_size / out_size); blend values[floor(in)] and values[ceil(in)]
  (clamped to the last pixel) by in - floor(in)."""
  in_size = len(values)
  scale = np.float32(in_size) / np.float32(out_size)
  out = np.empty(out_size, np.float64)
  for i in range(out_size):
    position = np.float32(i) * scale
    lower = int(np.floor(position))
    upper = min(int(np.ceil(position)), in_size - 1)
    lerp = float(position) - lower
    out[i] = values[lower] + (values[upper] - values[lower]) * lerp
  return out


@pytest.mark.parametrize("in_size,out_size", [(5, 12), (13, 4), (32, 299), (28, 299), (299, 299)])
def test_tf1_resize_matrix_matches_the_kernel_loop(in_size, out_size):
  values = np.random.default_rng(in_size).uniform(size=in_size).astype(np.float32)
  ours = inception.tf1_resize_matrix(in_size, out_size) @ values
  np.testing.assert_allclose(ours, _tf1_resize_reference(values, out_size), rtol=0, atol=1e-6)


def test_tf1_resize_of_a_ramp_samples_it_without_half_pixel_offsets():
  ramp = np.arange(32, dtype=np.float32)
  images = np.broadcast_to(ramp[None, :, None, None] + 100 * ramp[None, None, :, None], (1, 32, 32, 1))
  resized = np.asarray(inception.resize_bilinear(images, 299, 80, "tf1"))
  rows = np.minimum(np.arange(299) * 32 / 299, 31)
  cols = np.minimum(np.arange(80) * 32 / 80, 31)
  np.testing.assert_allclose(resized[0, :, :, 0], rows[:, None] + 100 * cols[None, :], atol=2e-3)


def test_the_two_conventions_differ_on_32px_images_and_agree_at_299():
  tf1, torch = inception.tf1_resize_matrix(32, 299), inception.bilinear_resize_matrix(32, 299)
  assert np.abs(tf1 - torch).max() > 0.4  # sample points shifted by ~0.45 input pixels
  np.testing.assert_array_equal(inception.tf1_resize_matrix(299, 299), np.eye(299, dtype=np.float32))
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  a = np.asarray(inception.fid_inception_input(images, "tf1"))
  b = np.asarray(inception.fid_inception_input(images, "pytorch_fid"))
  assert a.shape == b.shape == (2, 299, 299, 3)
  assert np.abs(a - b).mean() > 0.05


@pytest.mark.parametrize("pixel", [0, 64, 128, 255])
def test_input_scaling_of_each_convention(pixel):
  image = np.full((1, 4, 4, 1), pixel / 127.5 - 1, np.float32)  # library images are in [-1, 1]
  tf1 = np.asarray(inception.fid_inception_input(image, "tf1"))
  torch = np.asarray(inception.fid_inception_input(image, "pytorch_fid"))
  np.testing.assert_allclose(tf1, (pixel - 128) / 128, atol=1e-5)
  np.testing.assert_allclose(torch, 2 * pixel / 255 - 1, atol=1e-5)
  with pytest.raises(ValueError, match="must be one of"):
    inception.fid_inception_input(image, "tf2")


# ----------------------------------------------------------------------------------------------
# Weight files without logits; statistics files record their convention


@pytest.fixture(scope="module")
def random_variables():
  return inception.init_inception_variables(seed=0)


def _without_logits(variables):
  params = dict(variables["params"])
  params["fc"] = {name: np.zeros_like(value) for name, value in params["fc"].items()}
  return {**variables, "params": params}


def test_has_logits_tells_zero_fc_apart(random_variables):
  assert inception.has_logits(random_variables)
  assert not inception.has_logits(_without_logits(random_variables))


def test_a_file_without_fc_loads_with_no_logits(tmp_path, random_variables):
  state_dict = torch_weights.state_dict_from_inception_variables(random_variables)
  path = str(tmp_path / "pool3_only.pth")
  torch_weights.save_state_dict(path, {k: v for k, v in state_dict.items() if not k.startswith("fc.")})
  variables = inception.load_fid_inception_variables(path)
  assert not inception.has_logits(variables)
  np.testing.assert_array_equal(variables["params"]["Mixed_7c"]["branch_pool"]["conv"]["kernel"],
                                random_variables["params"]["Mixed_7c"]["branch_pool"]["conv"]["kernel"])


def _config(**evaluation):
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.evaluation.update(evaluation)
  return config


def test_is_is_refused_for_weights_without_logits(random_variables):
  no_logits = _without_logits(random_variables)
  with pytest.raises(errors.EvaluationError) as raised:
    evaluate.resolve_metrics(_config(metrics=("fid", "is")), no_logits)
  message = str(raised.value)
  assert "\n" not in message and inception.NO_LOGITS in message
  assert message.startswith("config.evaluation.metrics=('fid', 'is'): ")
  # The default set drops IS (logged); weights with logits keep it; no IS asked: nothing changes.
  assert evaluate.resolve_metrics(_config(metrics=DEFAULT), no_logits) == ("fid", "kid")
  assert evaluate.resolve_metrics(_config(metrics=DEFAULT), random_variables) == DEFAULT
  assert evaluate.resolve_metrics(_config(metrics=("kid",)), no_logits) == ("kid",)


def test_statistics_files_record_their_convention_and_others_are_refused(tmp_path):
  path = str(tmp_path / "stats.npz")
  metrics.save_statistics(path, np.zeros(2048), np.eye(2048), fid_preprocessing="pytorch_fid")
  assert metrics.statistics_preprocessing(path) == "pytorch_fid"
  with np.load(path) as f:
    assert f["fid_preprocessing"].dtype.kind == "U"  # readable without allow_pickle
  config = _config(reference_stats=path, fid_preprocessing="tf1")
  with pytest.raises(errors.EvaluationError) as raised:
    evaluate._reference_stats(config)  # pylint: disable=protected-access
  assert str(raised.value) == (
      f"config.evaluation.reference_stats={path!r}: made with fid_preprocessing='pytorch_fid', but "
      "config.evaluation.fid_preprocessing='tf1'; FIDs of different conventions are not comparable "
      "(use matching statistics or set the field to match)")
  config.evaluation.fid_preprocessing = "pytorch_fid"
  mu, _ = evaluate._reference_stats(config)  # pylint: disable=protected-access
  assert mu.shape == (2048,)


def test_a_ttur_statistics_file_is_read(tmp_path):
  # TTUR's fid_stats_cifar10_train.npz: float32 mu [2048] and sigma [2048, 2048], nothing else.
  path = str(tmp_path / "fid_stats_cifar10_train.npz")
  rng = np.random.default_rng(0)
  mu, a = rng.normal(size=2048).astype(np.float32), rng.normal(size=(2048, 8)).astype(np.float32)
  np.savez(path, mu=mu, sigma=a @ a.T)
  assert metrics.statistics_preprocessing(path) is None
  loaded_mu, loaded_sigma = evaluate._reference_stats(_config(reference_stats=path))  # pylint: disable=protected-access
  assert loaded_mu.dtype == np.float64
  np.testing.assert_array_equal(loaded_mu, mu)
  np.testing.assert_array_equal(loaded_sigma, a @ a.T)


# ----------------------------------------------------------------------------------------------
# Real features: the real weights on real CIFAR-10 pixels


@pytest.fixture(scope="module")
def real_variables():
  return inception.load_fid_inception_variables(REAL_WEIGHTS)


@pytest.fixture(scope="module")
def cifar():
  with np.load(os.path.join(SHARED_DATA, "cifar10_exact_subset.npz")) as f:
    return {key: f[key] for key in f.files}


def _float(images_uint8):
  return images_uint8.astype(np.float32) / 127.5 - 1


@requires_real_weights
@requires_shared_data("cifar10_exact_subset.npz")
def test_the_real_weight_file_has_no_logits(real_variables):
  assert not inception.has_logits(real_variables)


@pytest.mark.slow  # ~60 s on 2 contended cores: four compilations of the 299x299 network
@requires_real_weights
@requires_shared_data("cifar10_exact_subset.npz")
def test_real_features_are_stable_across_batch_sizes(real_variables, cifar):
  images = _float(cifar["test_x"][:6])
  for preprocessing in inception.PREPROCESSINGS:
    whole, _ = inception.fid_inception_features(real_variables, images, 6, preprocessing)
    batched, _ = inception.fid_inception_features(real_variables, images, 4, preprocessing)
    assert np.all(np.isfinite(whole)) and whole.shape == (6, 2048)
    np.testing.assert_allclose(batched, whole, rtol=1e-4, atol=1e-5)
  # The two conventions give different features of the same images (~23% relative L2 at 32 px).
  tf1, _ = inception.fid_inception_features(real_variables, images, 6, "tf1")
  torch, _ = inception.fid_inception_features(real_variables, images, 6, "pytorch_fid")
  assert np.linalg.norm(tf1 - torch) / np.linalg.norm(torch) > 0.05


@pytest.mark.slow  # ~40 s: a fresh process loads the 96 MB weights and compiles twice
@requires_real_weights
@requires_shared_data("cifar10_exact_subset.npz")
def test_real_features_stable_across_device_counts():
  on_four_devices("real_inception_features_on_four_devices")


def _ridge_probe_accuracy(train_x, train_y, test_x, test_y, l2=1.0):
  """Closed-form ridge regression onto one-hot labels (standardised features), argmax."""
  mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
  a, b = (train_x - mean) / std, (test_x - mean) / std
  a, b = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
  targets = np.eye(10)[train_y]
  # Dual form: the features (2048) outnumber the images.
  weights = a.T @ np.linalg.solve(a @ a.T + l2 * np.eye(len(a)), targets)
  return float(np.mean(np.argmax(b @ weights, axis=1) == test_y))


@pytest.mark.slow  # ~3 min on 2 contended cores: 500 real images through the 299x299 network
@requires_real_weights
@requires_shared_data("cifar10_exact_subset.npz")
def test_real_cifar10_features_separate_classes_and_fid_orders_sets(real_variables, cifar):
  train_x, test_x = cifar["train_x"][:300], cifar["test_x"][:100]
  train_y = cifar["train_labels_all"][cifar["train_index"][:300]]
  test_y = cifar["test_labels_all"][cifar["test_index"][:100]]
  noise = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
  train_f, _ = inception.fid_inception_features(real_variables, _float(train_x), 50, "tf1")
  test_f, _ = inception.fid_inception_features(real_variables, _float(test_x), 50, "tf1")
  noise_f, _ = inception.fid_inception_features(real_variables, _float(noise), 50, "tf1")
  assert all(np.all(np.isfinite(f)) for f in (train_f, test_f, noise_f))
  accuracy = _ridge_probe_accuracy(train_f, train_y, test_f, test_y)
  assert accuracy > 0.5, accuracy  # chance is 0.1
  fid_real = metrics.frechet_distance_from_features(train_f, test_f)
  fid_noise = metrics.frechet_distance_from_features(noise_f, test_f)
  print(f"probe accuracy {accuracy:.3f}, FID(train300, test100) {fid_real:.1f}, "
        f"FID(noise100, test100) {fid_noise:.1f}")  # shown with pytest -s
  assert 0 < fid_real < fid_noise / 3, (fid_real, fid_noise)


def _toy_features(variables, images):
  return images.reshape(len(images), -1).sum(axis=1) * variables


def test_feature_extraction_reports_progress(caplog):
  caplog.set_level("INFO")
  images = np.ones((10, 2, 2, 1), np.float32)
  out = metrics.extract_features(_toy_features, np.float32(2), iter([images[:7], images[7:]]),
                                 batch_size=4, num_images=10, what="toy features")
  np.testing.assert_array_equal(out, np.full(10, 8.0))
  assert "toy features (4 images a batch): 3/3 done" in caplog.text
