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


# A TFDS-format data set written by the test itself (array_record files, no network): 40 distinct
# 12x10 RGB images, which config image_size 8 center-crops to 10x10 and box-resizes.
TINY_TFDS = "jdiff_tiny_images"
TINY_ROWS = 40


def _tiny_raw_images():
  images = np.random.default_rng(7).integers(0, 256, (TINY_ROWS, 12, 10, 3), dtype=np.uint8)
  images[:, 0, 0, 0] = np.arange(TINY_ROWS)  # distinct even if the random draws were not
  return images


def _prepare_tiny_tfds(data_dir, file_format):
  """Writes the tiny set under data_dir/jdiff_tiny_images/1.0.0 in file_format (PNGs encoded
  with PIL, so that TensorFlow is not imported)."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  tfds = pytest.importorskip("tensorflow_datasets")

  class JdiffTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(
              num_classes=TINY_ROWS)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, image in enumerate(_tiny_raw_images()):
        png = io.BytesIO()
        Image.fromarray(image).save(png, "PNG")
        png.seek(0)
        yield i, {"image": png, "label": i}

  assert JdiffTinyImages.name == TINY_TFDS
  JdiffTinyImages(data_dir=str(data_dir), file_format=file_format).download_and_prepare()
  return data_dir


@pytest.fixture(scope="module")
def tiny_tfds_prepared(tmp_path_factory):
  return _prepare_tiny_tfds(tmp_path_factory.mktemp("tfds"), "array_record")


@pytest.fixture
def tiny_tfds(tiny_tfds_prepared, tmp_path, monkeypatch):
  """A fresh data_dir holding the prepared tiny set (no jdiff_cache yet); its name is accepted
  as a TFDS source."""
  import shutil  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "tfds"
  shutil.copytree(tiny_tfds_prepared, data_dir)
  monkeypatch.setattr(data, "TFDS_SOURCES", data.TFDS_SOURCES + (TINY_TFDS,))
  return str(data_dir)


def _cache_files(data_dir):
  cache = os.path.join(data_dir, "jdiff_cache")
  return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def _tiny_config(data_dir, streaming):
  return data_config(source=TINY_TFDS, data_dir=data_dir, image_size=8, num_channels=3,
                     streaming=streaming)


def _tiny_expected(data_dir):
  """The tiny set's images fitted to 8x8, in the order of the split (TFDS shuffles on writing;
  each example's label is its index in _tiny_raw_images)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  examples = tfds.builder(TINY_TFDS, data_dir=data_dir).as_data_source("train")
  labels = [examples[i]["label"] for i in range(len(examples))]
  assert sorted(labels) == list(range(TINY_ROWS))
  return data._fit(_tiny_raw_images(), 8, 3)[labels]  # pylint: disable=protected-access


def test_streamed_tfds_batches_equal_the_cached_ones_and_write_no_cache(tiny_tfds):
  expected = _tiny_expected(tiny_tfds)
  streamed = data.load_image_source(_tiny_config(tiny_tfds, "always"))
  assert isinstance(streamed, data.TfdsImages)
  assert len(streamed) == TINY_ROWS and streamed.shape == (TINY_ROWS, 8, 8, 3)
  np.testing.assert_array_equal(streamed[[5, 0, 39]], expected[[5, 0, 39]])
  np.testing.assert_array_equal(streamed[3], expected[3])
  stream = data.BatchStream(streamed, 12, seed=3, process_index=0, process_count=1)
  streamed_batches = [stream.batch(step) for step in range(8)]  # 96 rows: crosses 2 epochs
  assert _cache_files(tiny_tfds) == []  # nothing decoded to disk

  cached = data.load_image_source(_tiny_config(tiny_tfds, "never"))
  assert isinstance(cached, np.ndarray) and _cache_files(tiny_tfds) == [f"{TINY_TFDS}_train_8.npy"]
  np.testing.assert_array_equal(cached, expected)
  from_cache = data.BatchStream(cached, 12, seed=3, process_index=0, process_count=1)
  for step, batch in enumerate(streamed_batches):
    np.testing.assert_array_equal(batch, from_cache.batch(step))
    np.testing.assert_array_equal(batch, expected[stream.indices(step)])
  # A resumed run (a new stream starting at step 5) continues with the same batches.
  resumed = data.BatchStream(data.load_image_source(_tiny_config(tiny_tfds, "always")), 12,
                             seed=3, process_index=0, process_count=1)
  for step, batch in zip(range(5, 8), resumed.iterate(5)):
    np.testing.assert_array_equal(batch, streamed_batches[step])
  # load_images still gives an array (the cache) whatever data.streaming says.
  assert isinstance(data.load_images(_tiny_config(tiny_tfds, "always")), np.ndarray)


def test_each_process_reads_only_its_rows_of_the_global_batch(tiny_tfds):
  source = data.load_image_source(_tiny_config(tiny_tfds, "always"))
  reference = data.BatchStream(source, 12, seed=5, process_index=0, process_count=1)
  for step in (0, 1, 2, 3, 6):
    read, batches = [], []
    for process_index in range(2):
      source = data.load_image_source(_tiny_config(tiny_tfds, "always"))  # one per process
      records = source._records  # pylint: disable=protected-access
      real_getitems = records.__getitems__
      log = []
      source._records = type("Spy", (), {  # pylint: disable=protected-access
          "__getitems__": lambda self, keys, log=log, real=real_getitems: (
              log.extend(keys), real(keys))[1]})()
      stream = data.BatchStream(source, 12, seed=5, process_index=process_index, process_count=2)
      batches.append(stream.batch(step))
      stream._reader.shutdown(wait=True)  # pylint: disable=protected-access
      # It read its 6 rows of this step, and of the next step (the prefetch), nothing else.
      own = list(stream.indices(step)) + list(stream.indices(step + 1))
      assert sorted(log) == sorted(own)
      read.append(set(stream.indices(step)))
    global_rows = reference.indices(step)
    if step < 3:  # within the first epoch the rows of a global batch are distinct
      assert not read[0] & read[1]
    assert read[0] | read[1] == set(global_rows)
    np.testing.assert_array_equal(np.concatenate(batches), reference.batch(step))


def test_auto_streams_only_sets_above_the_size_limit(tiny_tfds, monkeypatch):
  assert isinstance(data.load_image_source(_tiny_config(tiny_tfds, "auto")), np.ndarray)
  assert _cache_files(tiny_tfds) == [f"{TINY_TFDS}_train_8.npy"]
  os.remove(os.path.join(tiny_tfds, "jdiff_cache", f"{TINY_TFDS}_train_8.npy"))
  monkeypatch.setattr(data, "STREAM_ABOVE_BYTES", TINY_ROWS * 8 * 8 * 3 - 1)
  assert isinstance(data.load_image_source(_tiny_config(tiny_tfds, "auto")), data.TfdsImages)
  assert _cache_files(tiny_tfds) == []


def test_a_tfrecord_set_is_cached_not_streamed_and_always_says_why_in_one_line(
    tmp_path, monkeypatch, caplog):
  data_dir = str(_prepare_tiny_tfds(tmp_path / "tfds", "tfrecord"))
  monkeypatch.setattr(data, "TFDS_SOURCES", data.TFDS_SOURCES + (TINY_TFDS,))
  with pytest.raises(data.DataError) as info:
    data.load_image_source(_tiny_config(data_dir, "always"))
  message = str(info.value)
  assert "\n" not in message and "data.streaming='always'" in message and "tfrecord" in message
  assert _cache_files(data_dir) == []
  # auto, above the size limit: one warning line, then the cache (read through tf.data).
  monkeypatch.setattr(data, "STREAM_ABOVE_BYTES", 0)
  images = data.load_image_source(_tiny_config(data_dir, "auto"))
  assert isinstance(images, np.ndarray) and _cache_files(data_dir) == [f"{TINY_TFDS}_train_8.npy"]
  assert "no random access" in caplog.text
  expected = data._fit(_tiny_raw_images(), 8, 3)  # pylint: disable=protected-access
  assert sorted(map(bytes, images)) == sorted(map(bytes, expected))


def test_data_streaming_is_validated():
  from jdiff import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.default_config()
  assert config.data.streaming == "auto"
  config.data.streaming = "sometimes"
  with pytest.raises(config_lib.ConfigError, match=r"data\.streaming"):
    config_lib.validate(config)
  with pytest.raises(data.DataError, match="streaming='sometimes'"):
    data.load_image_source(data_config(source="cifar10", streaming="sometimes"))
