"""Evaluation library: metrics against closed forms, the FID Inception network and its weight
files (zip written here, legacy built by hand), the torch-exact resize, Digits FD, plots."""

import os
import pickle
import struct
import zipfile

import jax
import numpy as np
import pytest

from conftest import on_four_devices
from jdiff.evaluation import digits_fd, inception, metrics, torch_weights

# ----------------------------------------------------------------------------------------------
# Frechet distance, Inception Score, KID


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  s1, s2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  assert metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_closed_form_for_rotated_commuting_covariances():
  # Covariances sharing eigenvectors: the distance is the diagonal formula on the eigenvalues.
  rng = np.random.default_rng(1)
  rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  e1, e2 = rng.uniform(0.5, 2.0, 5), rng.uniform(0.5, 2.0, 5)
  sigma1, sigma2 = rotation @ np.diag(e1) @ rotation.T, rotation @ np.diag(e2) @ rotation.T
  mu = rng.normal(size=5)
  expected = 4 * mu @ mu + np.sum(e1 + e2 - 2 * np.sqrt(e1 * e2))
  assert metrics.frechet_distance(mu, sigma1, -mu, sigma2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_features_with_themselves_is_zero_even_when_singular():
  rng = np.random.default_rng(2)
  features = rng.normal(size=(500, 16))
  assert abs(metrics.frechet_distance_from_features(features, features)) < 1e-6
  # Fewer samples than dimensions and a dead feature: singular covariances.
  singular = rng.normal(size=(10, 32))
  singular[:, 0] = 0.0
  value = metrics.frechet_distance_from_features(singular, singular)
  assert np.isfinite(value) and abs(value) < 1e-3


def test_statistics_round_trip_through_npz(tmp_path):
  rng = np.random.default_rng(3)
  mu, sigma = metrics.feature_statistics(rng.normal(size=(50, 4)))
  path = str(tmp_path / "stats.npz")
  metrics.save_statistics(path, mu, sigma)
  with np.load(path) as f:
    assert sorted(f.files) == ["mu", "sigma"]
  loaded_mu, loaded_sigma = metrics.load_statistics(path)
  np.testing.assert_array_equal(loaded_mu, mu)
  np.testing.assert_array_equal(loaded_sigma, sigma)


def test_inception_score_of_uniform_predictions_is_one():
  mean, std = metrics.inception_score(np.zeros((100, 1008)))
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_distinct_classes_is_the_number_of_classes():
  num_classes = 7
  labels = np.tile(np.arange(num_classes), 10 * 3)  # every split holds every class 3 times
  logits = 100.0 * np.eye(1008)[labels]
  mean, std = metrics.inception_score(logits, num_splits=10)
  assert mean == pytest.approx(num_classes, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def _biased_polynomial_mmd2(x, y):
  kernel = lambda a, b: (a @ b.T / x.shape[1] + 1) ** 3
  return kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()


def test_kid_estimator_is_unbiased_where_the_plug_in_estimator_is_not():
  rng = np.random.default_rng(4)
  draws = [(rng.normal(size=(50, 8)), rng.normal(size=(50, 8))) for _ in range(300)]
  unbiased = np.array([metrics.polynomial_mmd2_unbiased(x, y) for x, y in draws])
  biased = np.array([_biased_polynomial_mmd2(x, y) for x, y in draws])
  standard_error = unbiased.std() / np.sqrt(len(unbiased))
  assert abs(unbiased.mean()) < 4 * standard_error
  assert biased.mean() > 20 * standard_error  # the diagonal terms push the plug-in estimate up


def test_kid_of_shifted_gaussians_matches_the_population_value():
  # d = 1, x ~ N(0, 1), y ~ N(1, 1), k(a, b) = (ab + 1)^3. With independent a, b:
  # E k = E a^3 E b^3 + 3 E a^2 E b^2 + 3 E a E b + 1, moments of N(m, 1): m, 1 + m^2, m^3 + 3m.
  # E k(x, x') = 4, E k(y, y') = 16 + 12 + 3 + 1 = 32, E k(x, y) = 3 * 2 + 1 = 7: MMD^2 = 22.
  rng = np.random.default_rng(5)
  values = np.array([metrics.polynomial_mmd2_unbiased(rng.normal(0, 1, (200, 1)),
                                                      rng.normal(1, 1, (200, 1))) for _ in range(200)])
  assert abs(values.mean() - 22.0) < 4 * values.std() / np.sqrt(len(values))


def test_kid_over_whole_set_subsets_is_the_full_u_statistic():
  rng = np.random.default_rng(6)
  a, b = rng.normal(size=(30, 3)), rng.normal(0.5, 1, size=(30, 3))
  mean, std = metrics.kernel_inception_distance(a, b, num_subsets=5, subset_size=1000)  # clipped to 30
  assert std == pytest.approx(0.0, abs=1e-9)
  assert mean == pytest.approx(metrics.polynomial_mmd2_unbiased(a, b), rel=1e-9) and mean > 0


# ----------------------------------------------------------------------------------------------
# Feature extraction


def _double_sum(variables, images):
  return {"sum": images.reshape(len(images), -1).sum(axis=1) * variables["scale"]}


def test_extract_features_regroups_pads_and_keeps_order():
  images = np.arange(11 * 4, dtype=np.float32).reshape(11, 2, 2, 1)
  expected = images.reshape(11, -1).sum(axis=1) * 2
  variables = {"scale": np.float32(2)}
  from_array = metrics.extract_features(_double_sum, variables, images, batch_size=4)
  uneven_batches = iter([images[:3], images[3:10], images[10:]])
  from_batches = metrics.extract_features(_double_sum, variables, uneven_batches, batch_size=4)
  np.testing.assert_array_equal(from_array["sum"], expected)
  np.testing.assert_array_equal(from_batches["sum"], expected)


def test_extract_features_shards_over_four_devices():
  on_four_devices("extract_features_shards")


def test_cached_features_computes_once(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return {"pool3": np.ones((3, 2)), "logits": np.zeros((3, 5))}

  first = metrics.cached_features("toy_set", compute, str(tmp_path))
  second = metrics.cached_features("toy_set", compute, str(tmp_path))
  assert len(calls) == 1 and os.path.exists(tmp_path / "features" / "toy_set.npz")
  np.testing.assert_array_equal(first["pool3"], second["pool3"])
  with pytest.raises(ValueError):
    metrics.cached_features("../escape", compute, str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Inception network and preprocessing


def _torch_bilinear_reference(values, out_size):
  """torch's upsample_bilinear2d (align_corners=False) along one axis, written out per pixel."""
  in_size = len(values)
  scale = np.float32(in_size / out_size)
  result = np.zeros(out_size, np.float32)
  for i in range(out_size):
    src = max(scale * np.float32(i + 0.5) - np.float32(0.5), np.float32(0))
    lower = int(src)
    step = 1 if lower < in_size - 1 else 0
    frac = np.float32(src - lower)
    result[i] = (np.float32(1) - frac) * values[lower] + frac * values[lower + step]
  return result


@pytest.mark.parametrize("in_size,out_size", [(5, 12), (13, 4), (32, 299), (299, 299), (300, 299)])
def test_bilinear_resize_matrix_matches_torch_formula(in_size, out_size):
  values = np.random.default_rng(in_size).uniform(size=in_size).astype(np.float32)
  ours = inception.bilinear_resize_matrix(in_size, out_size) @ values
  np.testing.assert_allclose(ours, _torch_bilinear_reference(values, out_size), rtol=0, atol=1e-6)


def test_bilinear_resize_of_a_ramp_is_the_ramp_at_the_sample_points():
  # A linear ramp resamples exactly to src = (i + 0.5) * in/out - 0.5, clamped to [0, in - 1].
  ramp = np.arange(32, dtype=np.float32)
  images = np.broadcast_to(ramp[None, :, None, None] + 100 * ramp[None, None, :, None], (1, 32, 32, 1))
  resized = np.asarray(inception.resize_bilinear(images, 299, 80))
  rows = np.clip((np.arange(299) + 0.5) * 32 / 299 - 0.5, 0, 31)
  cols = np.clip((np.arange(80) + 0.5) * 32 / 80 - 0.5, 0, 31)
  np.testing.assert_allclose(resized[0, :, :, 0], rows[:, None] + 100 * cols[None, :], atol=2e-3)


def test_average_pool_ignores_padding():
  pooled = np.asarray(inception._avg_pool_3x3_same(np.ones((1, 4, 4, 2), np.float32)))
  np.testing.assert_array_equal(pooled, np.ones_like(pooled))


@pytest.fixture(scope="module")
def random_inception_variables():
  return inception.init_inception_variables(seed=0)


def test_inception_outputs_pool3_and_logits(random_inception_variables):
  images = np.random.default_rng(7).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  pool3, logits = inception.fid_inception_features(random_inception_variables, images, batch_size=2)
  assert pool3.shape == (2, inception.POOL3_DIM) and logits.shape == (2, inception.NUM_LOGITS)
  assert np.all(np.isfinite(pool3)) and np.all(pool3 >= 0)  # a mean of ReLU outputs
  assert not np.allclose(pool3[0], pool3[1])
  with pytest.raises(ValueError):
    inception.fid_inception_input(np.zeros((1, 8, 8, 2), np.float32))


# ----------------------------------------------------------------------------------------------
# Weight files


def test_pytorch_fid_file_round_trips_every_tensor_exactly(tmp_path, random_inception_variables):
  state_dict = torch_weights.state_dict_from_inception_variables(random_inception_variables)
  assert len(state_dict) == 94 * 5 + 2  # 94 conv+BN layers and the fc layer of pytorch-fid
  assert state_dict["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
  assert state_dict["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
  assert state_dict["Mixed_7c.branch_pool.bn.running_var"].shape == (192,)
  assert state_dict["fc.weight"].shape == (1008, 2048)
  path = str(tmp_path / "pt_inception-random.pth")
  torch_weights.save_state_dict(path, state_dict)
  loaded = torch_weights.load_state_dict(path)
  assert list(loaded) == list(state_dict)
  for name, value in state_dict.items():
    assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value), name
  variables = inception.load_fid_inception_variables(path)
  flat = jax.tree_util.tree_leaves_with_path(random_inception_variables)
  reloaded = dict(jax.tree_util.tree_leaves_with_path(variables))
  for key_path, value in flat:
    np.testing.assert_array_equal(np.asarray(reloaded[key_path]), value)


def _op_str(text):
  return b"X" + struct.pack("<I", len(text)) + text.encode()


def _op_int(value):
  return b"J" + struct.pack("<i", value)


def _op_tuple(*items):
  return b"(" + b"".join(items) + b"t"


def _op_global(module, name):
  return f"c{module}\n{name}\n".encode()


def _legacy_tensor(name, storage_type, key, numel, view, offset, size, stride):
  view_op = b"N" if view is None else _op_tuple(_op_str(view[0]), _op_int(view[1]), _op_int(view[2]))
  persistent_id = _op_tuple(_op_str("storage"), _op_global("torch", storage_type), _op_str(key),
                            _op_str("cpu"), _op_int(numel), view_op) + b"Q"
  hooks = _op_global("collections", "OrderedDict") + b")R"
  arguments = _op_tuple(persistent_id, _op_int(offset), _op_tuple(*map(_op_int, size)),
                        _op_tuple(*map(_op_int, stride)), b"\x89", hooks)
  return _op_str(name) + _op_global("torch._utils", "_rebuild_tensor_v2") + arguments + b"R"


def test_legacy_format_reader_on_a_hand_built_file(tmp_path):
  # torch < 1.6 layout: magic, protocol version, sys info, the state dict pickle (storages as
  # persistent ids), the storage keys, then each storage as int64 element count + raw bytes.
  floats = np.arange(24, dtype=np.float32)
  state_pickle = (b"\x80\x02" + _op_global("collections", "OrderedDict") + b")R("
                  + _legacy_tensor("bn.running_mean", "FloatStorage", "s0", 24, None, 4, (3, 4), (4, 1))
                  + _legacy_tensor("transposed", "FloatStorage", "s0", 24, None, 0, (4, 3), (1, 4))
                  + _legacy_tensor("from_view", "FloatStorage", "s0", 24, ("s0_view", 20, 4), 1, (2,), (1,))
                  + _legacy_tensor("bn.num_batches_tracked", "LongStorage", "s1", 1, None, 0, (), ())
                  + _legacy_tensor("counts", "LongStorage", "s2", 3, None, 0, (3,), (1,))
                  + b"u.")
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
  path = tmp_path / "legacy.pth"
  with open(path, "wb") as f:
    for header in (torch_weights.LEGACY_MAGIC_NUMBER, torch_weights.LEGACY_PROTOCOL_VERSION, sys_info):
      f.write(pickle.dumps(header, protocol=2))
    f.write(state_pickle)
    f.write(pickle.dumps(["s0", "s1", "s2"], protocol=2))
    for data in (floats, np.array([7], np.int64), np.array([5, -6, 2**40], np.int64)):
      f.write(struct.pack("<q", data.size) + data.tobytes())
  loaded = torch_weights.load_state_dict(str(path))
  # bn.num_batches_tracked is dropped.
  assert list(loaded) == ["bn.running_mean", "transposed", "from_view", "counts"]
  np.testing.assert_array_equal(loaded["bn.running_mean"], floats[4:16].reshape(3, 4))
  np.testing.assert_array_equal(loaded["transposed"], floats[:12].reshape(3, 4).T)
  np.testing.assert_array_equal(loaded["from_view"], [21.0, 22.0])
  assert loaded["counts"].dtype == np.int64 and list(loaded["counts"]) == [5, -6, 2**40]


@pytest.mark.parametrize("file_format", ["zip", "legacy"])
def test_reader_refuses_arbitrary_globals(tmp_path, file_format):
  marker = tmp_path / "code_ran"
  payload = b"\x80\x02" + _op_global("os", "makedirs") + _op_tuple(_op_str(str(marker))) + b"R."
  path = tmp_path / "evil.pth"
  if file_format == "zip":
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("archive/data.pkl", payload)
  else:
    path.write_bytes(payload)  # in place of the magic number
  with pytest.raises((pickle.UnpicklingError, ValueError)):
    torch_weights.load_state_dict(str(path))
  assert not marker.exists()


def test_missing_weights_fail_with_one_clear_line(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise OSError("no network")

  monkeypatch.setattr(torch_weights.urllib.request, "urlopen", no_network)
  with pytest.raises(RuntimeError) as error:
    torch_weights.fid_inception_weights_path(directory=str(tmp_path))
  message = str(error.value)
  assert "\n" not in message and str(tmp_path / torch_weights.FID_WEIGHTS_FILENAME) in message
  assert os.listdir(tmp_path) == []  # no partial download left behind
  with pytest.raises(FileNotFoundError):
    torch_weights.fid_inception_weights_path(path=str(tmp_path / "absent.pth"))


# ----------------------------------------------------------------------------------------------
# Digits FD and plots


def test_digits_fd_separates_real_digits_from_noise(tmp_path):
  variables = digits_fd.digits_classifier(str(tmp_path))
  assert digits_fd.held_out_accuracy(variables) > 0.9
  _, _, held_out, _ = digits_fd.load_digits_split()
  real = digits_fd.digits_frechet_distance(held_out, str(tmp_path))
  noise = digits_fd.digits_frechet_distance(
      np.random.default_rng(8).uniform(-1, 1, held_out.shape).astype(np.float32), str(tmp_path))
  assert real < 20 and noise > 10 * real
  # 32x32 images are block-averaged back to 8x8, so upsampled digits score like the originals.
  upsampled = np.repeat(np.repeat(held_out, 4, axis=1), 4, axis=2)
  assert digits_fd.digits_frechet_distance(upsampled, str(tmp_path)) == pytest.approx(real, rel=1e-4)



def test_kid_interval_covers_zero_at_the_nominal_rate_for_one_distribution():
  """Over repeated draws of both sets from one Gaussian, the 95% interval of
  metrics.kid_with_interval covers 0 about 95% of the time (binomial 99% band for 300 draws:
  0.916-0.977); for a shifted distribution it excludes 0."""
  rng = np.random.default_rng(0)
  draws, covered = 300, 0
  for _ in range(draws):
    generated, reference = rng.standard_normal((100, 16)), rng.standard_normal((400, 16))
    low, high = metrics.kid_with_interval(generated, reference, seed=1)["ci95"]
    covered += low <= 0.0 <= high
  assert 0.916 <= covered / draws <= 0.977, covered / draws
  shifted = metrics.kid_with_interval(rng.standard_normal((100, 16)) + 0.5,
                                      rng.standard_normal((400, 16)))
  assert shifted["ci95"][0] > 0 and shifted["num_blocks"] == 10 and shifted["block_size"] == 10
