"""Data sources and the deterministic, per-process batch stream."""

import os
import tarfile

import ml_collections
import numpy as np
import pytest

from conftest import SHARED_DATA, requires_shared_data
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
  with pytest.raises(data.DataError, match="unreadable"):
    data.load_images(data_config(source="npz", path=str(tmp_path / "bad.npz")))
  with pytest.raises(data.DataError, match="no image files"):
    data.load_images(data_config(source="folder", path=str(tmp_path)))


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
