"""Data sources and the deterministic, per-process batch stream."""

import os
import tarfile

import ml_collections
import numpy as np
import pytest

from conftest import SHARED_DATA, cli, requires_shared_data
from jdiff import data


def data_config(**overrides):
  config = ml_collections.ConfigDict(dict(source="digits", path="", data_dir="", split="train",
                                          image_size=8, num_channels=1, npz_key=""))
  config.update(overrides)
  return config


def test_digits_are_uint8_nhwc_in_full_range():
  images = data.load_images(data_config())
  assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
  assert images.min() == 0 and images.max() == 255


def test_to_float_maps_uint8_to_minus_one_one():
  np.testing.assert_allclose(data.to_float(np.array([0, 255], np.uint8)), [-1.0, 1.0])


@requires_shared_data("cifar10_exact_subset.npz")
def test_npz_source_reads_exact_cifar_pixels():
  path = os.path.join(SHARED_DATA, "cifar10_exact_subset.npz")
  images = data.load_images(data_config(source="npz", path=path, image_size=32, num_channels=3,
                                        npz_key="train_x"))
  with np.load(path) as archive:
    np.testing.assert_array_equal(images, archive["train_x"])


@requires_shared_data("fashion_mnist", "t10k-images-idx3-ubyte.gz")
def test_idx_source_reads_fashion_mnist_and_resizes():
  path = os.path.join(SHARED_DATA, "fashion_mnist", "t10k-images-idx3-ubyte.gz")
  images = data.load_images(data_config(source="idx", path=path, image_size=28))
  assert images.shape == (10000, 28, 28, 1)
  small = data.load_images(data_config(source="idx", path=path, image_size=14))
  # A 2x box resize is the mean of each 2x2 block.
  expected = images[:3, :, :, 0].reshape(3, 14, 2, 14, 2).astype(np.float64).mean(axis=(2, 4))
  assert np.abs(small[:3, :, :, 0] - expected).max() <= 1


@requires_shared_data("cifar10_jpeg.tar.gz")
def test_folder_source_reads_class_subfolders(tmp_path):
  with tarfile.open(os.path.join(SHARED_DATA, "cifar10_jpeg.tar.gz")) as archive:
    members = [m for m in archive if m.isfile() and "/train/" in "/" + m.name
               and os.path.basename(m.name) in ("0000.jpg", "0001.jpg")]
    archive.extractall(tmp_path, members=members, filter="data")
  roots = {os.path.normpath(os.path.join(tmp_path, m.name)).split(os.sep + "train" + os.sep)[0]
           for m in members}
  (root,) = roots
  images = data.load_images(data_config(source="folder", path=root, image_size=32, num_channels=3))
  assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8


def test_missing_and_unreadable_files_raise_data_error(tmp_path):
  with pytest.raises(data.DataError, match="does not exist"):
    data.load_images(data_config(source="npz", path=str(tmp_path / "nope.npz")))
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(data.DataError, match="not a NumPy .npz"):
    data.load_images(data_config(source="npz", path=str(tmp_path / "bad.npz")))
  (tmp_path / "bad.idx.gz").write_bytes(b"not gzip")
  with pytest.raises(data.DataError, match="unreadable"):
    data.load_images(data_config(source="idx", path=str(tmp_path / "bad.idx.gz")))
  with pytest.raises(data.DataError, match="no image files"):
    data.load_images(data_config(source="folder", path=str(tmp_path)))


EXPECTED_SHAPE = "expected uint8 images [N, H, W] or [N, H, W, C] with C = 1 or 3"


def _images(*shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def _load_error(path, **overrides) -> str:
  """The DataError message of loading `path` as data.source=npz (one line)."""
  with pytest.raises(data.DataError) as info:
    data.load_images(data_config(source="npz", path=str(path), **overrides))
  message = str(info.value)
  assert "\n" not in message
  return message


def test_npz_with_several_image_arrays_names_them_and_asks_for_npz_key(tmp_path):
  path = tmp_path / "two.npz"
  np.savez(path, train_images=_images(4, 8, 8), test_images=_images(4, 8, 8, 1), labels=np.arange(4))
  message = _load_error(path)
  assert "'train_images'" in message and "'test_images'" in message and "'labels'" not in message
  assert "set config.data.npz_key" in message


def test_npz_key_and_conventional_names_choose_the_array(tmp_path):
  path = tmp_path / "two.npz"
  first, second = _images(4, 8, 8, 1, seed=1), _images(4, 8, 8, 1, seed=2)
  np.savez(path, first=first, second=second)
  np.testing.assert_array_equal(data.load_images(data_config(source="npz", path=str(path),
                                                             npz_key="second")), second)
  np.testing.assert_array_equal(data.load_images(data_config(source="npz", path=str(path),
                                                             npz_key="first")), first)
  # Without a key, "x" wins over other image arrays.
  np.savez(path, first=first, x=second)
  np.testing.assert_array_equal(data.load_images(data_config(source="npz", path=str(path))), second)


def test_missing_npz_key_lists_the_arrays_of_the_file(tmp_path):
  path = tmp_path / "two.npz"
  np.savez(path, first=_images(4, 8, 8), second=_images(4, 8, 8))
  message = _load_error(path, npz_key="images")
  assert "npz_key='images'" in message and "'first'" in message and "'second'" in message


@pytest.mark.parametrize("array, found", [
    (_images(4, 64), "shape (4, 64) dtype uint8"),
    (_images(2, 3, 8, 8, 1), "shape (2, 3, 8, 8, 1) dtype uint8"),
    (_images(2, 8, 8, 4), "shape (2, 8, 8, 4) dtype uint8"),
    (np.zeros((2, 8, 8), np.float32), "shape (2, 8, 8) dtype float32"),
    (_images(0, 8, 8), "shape (0, 8, 8) dtype uint8"),
], ids=["rank2", "rank5", "4channels", "float32", "empty"])
def test_invalid_image_array_names_file_array_shape_and_expectation(tmp_path, array, found):
  path = tmp_path / "bad.npz"
  np.savez(path, x=array)
  message = _load_error(path)
  assert message.startswith(f"{path}: array 'x' has {found}; {EXPECTED_SHAPE}")
  assert "npz_key" not in message  # no other array would resolve it


def test_float_images_get_a_conversion_hint(tmp_path):
  path = tmp_path / "float.npz"
  np.savez(path, x=np.zeros((2, 8, 8), np.float32))
  assert ".astype(np.uint8)" in _load_error(path)


def test_npy_file_is_read_as_the_image_array(tmp_path):
  path = tmp_path / "images.npy"
  images = _images(5, 8, 8, 1)
  np.save(path, images)
  np.testing.assert_array_equal(data.load_images(data_config(source="npz", path=str(path))), images)
  np.save(path, np.zeros((5, 8, 8), np.float64))
  assert _load_error(path).startswith(f"{path}: the .npy array has shape (5, 8, 8) dtype float64; "
                                      f"{EXPECTED_SHAPE}")


def test_random_bytes_and_text_are_not_a_numpy_archive(tmp_path):
  for name, content in (("random.npz", np.random.default_rng(0).bytes(256)),
                        ("text.npz", b"images\n1 2 3\n"), ("empty.npz", b"")):
    path = tmp_path / name
    path.write_bytes(content)
    assert _load_error(path).startswith(f"{path}: not a NumPy .npz archive")


def test_object_arrays_raise_data_error_not_a_traceback(tmp_path):
  path = tmp_path / "objects.npz"
  np.savez(path, images=np.array([{"a": 1}, None], dtype=object))
  assert _load_error(path).startswith(f"{path}: array 'images' has shape (2,) dtype object; "
                                      f"{EXPECTED_SHAPE}")
  np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object))
  assert f"dtype object; {EXPECTED_SHAPE}" in _load_error(tmp_path / "objects.npy")


def test_idx_arrays_are_validated_like_npz(tmp_path):
  labels = np.arange(10, dtype=np.uint8)
  path = tmp_path / "labels-idx1-ubyte"
  path.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + labels.tobytes())
  with pytest.raises(data.DataError) as info:
    data.load_images(data_config(source="idx", path=str(path)))
  assert str(info.value).startswith(f"{path}: the idx array has shape (10,) dtype uint8; {EXPECTED_SHAPE}")


def test_cli_prints_one_error_line_for_a_bad_data_file(tmp_path):
  bad_file = tmp_path / "flat.npz"
  np.savez(bad_file, x=_images(16, 64))
  result = cli(["--config=configs/quickstart.py:tiny", f"--workdir={tmp_path}/w", "--mode=train",
                "--config.data.source=npz", f"--config.data.path={bad_file}"])
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and EXPECTED_SHAPE in errors[0], result.stderr
  assert "Traceback" not in result.stderr
  assert result.returncode == 2, result.stderr


def test_batch_stream_is_deterministic_and_processes_split_the_global_batch():
  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  stream = data.BatchStream(images, 4, seed=3, process_index=0, process_count=1)
  again = data.BatchStream(images, 4, seed=3, process_index=0, process_count=1)
  for step in range(6):
    np.testing.assert_array_equal(stream.batch(step), again.batch(step))
  # Every epoch visits every image once.
  first_epoch = np.concatenate([stream.indices(0), stream.indices(1), stream.indices(2)[:2]])
  assert sorted(first_epoch) == list(range(10))
  halves = [data.BatchStream(images, 4, seed=3, process_index=p, process_count=2).batch(5)
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), stream.batch(5))
