"""Class labels (config.data.label_key) from every data source, row for row with the images."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jdiff import config_lib
from jdiff import data


def data_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      source="digits", path="", data_dir="", split="train", image_size=8, num_channels=1,
      npz_key="", label_key="label", streaming="auto", kind="image"))
  config.update(overrides)
  return config


def one_line_error(call, *expected):
  """The message of the DataError that call() raises: one line, holding each of `expected`."""
  with pytest.raises(data.DataError) as info:
    call()
  message = str(info.value)
  assert "\n" not in message, message
  for part in expected:
    assert part in message, (part, message)
  return message


# ----------------------------------------------------------------------------------------------
# Config


def test_label_key_defaults_to_no_labels_and_must_be_a_string():
  config = config_lib.default_config()
  assert config.data.label_key == ""
  config_lib.validate(config)
  check, allowed = dict(config_lib.RULES)["data.label_key"]
  assert check("label") and check("") and not check(3) and not check(None)
  assert allowed == "a string"
  assert data.load_labels(data_config(label_key="")) is None
  # A config made before data.label_key existed has no labels either.
  config = data_config()
  del config["label_key"]
  assert data.load_labels(config) is None


# ----------------------------------------------------------------------------------------------
# sklearn digits


def test_digits_labels_are_sklearns_target_aligned_with_the_images():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  labels = data.load_labels(data_config())
  images = data.load_image_source(data_config())
  assert labels.dtype == np.int32 and labels.shape == (1797,)
  np.testing.assert_array_equal(labels, digits.target)
  assert data.num_classes_in(labels) == 10
  expected = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  for i in (0, 1, 2, 500, 1796):
    np.testing.assert_array_equal(images[i], expected[i])
    np.testing.assert_array_equal(images[i], data.load_digits()[i])
    assert labels[i] == digits.target[i]
  one_line_error(lambda: data.load_labels(data_config(label_key="target")),
                 "label_key='target'", "'digits'", "data.label_key='label'")


# ----------------------------------------------------------------------------------------------
# BatchStream


def test_batch_stream_with_labels_gives_the_labels_of_the_same_rows():
  images = data.load_image_source(data_config())
  labels = data.load_labels(data_config())
  plain = data.BatchStream(images, 32, seed=4, process_index=0, process_count=1)
  stream = data.BatchStream(images, 32, seed=4, process_index=0, process_count=1, labels=labels)
  for step in (0, 1, 56, 57, 200):  # 1797 / 32: step 56 crosses into the second epoch
    indices = stream.indices(step)
    np.testing.assert_array_equal(indices, plain.indices(step))
    batch = stream.batch(step)
    assert set(batch) == {"image", "label"}
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (32,)
    np.testing.assert_array_equal(batch["image"], images[indices])
    np.testing.assert_array_equal(batch["label"], labels[indices])
    # Without labels a batch is the image array alone, the same rows.
    unlabeled = plain.batch(step)
    assert isinstance(unlabeled, np.ndarray)
    np.testing.assert_array_equal(unlabeled, batch["image"])
  for step, batch in zip(range(3, 6), stream.iterate(3)):
    np.testing.assert_array_equal(batch["image"], images[stream.indices(step)])
    np.testing.assert_array_equal(batch["label"], labels[stream.indices(step)])
  # Each process gets the labels of its own rows.
  halves = [data.BatchStream(images, 32, seed=4, process_index=p, process_count=2,
                             labels=labels).batch(7) for p in range(2)]
  whole = stream.batch(7)
  np.testing.assert_array_equal(np.concatenate([h["label"] for h in halves]), whole["label"])
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), whole["image"])


def test_batch_stream_refuses_labels_that_do_not_fit_the_images():
  images = data.load_digits()[:10]
  one_line_error(lambda: data.BatchStream(images, 4, 0, 0, 1, labels=np.arange(9)),
                 "holds 9 labels", "10")
  one_line_error(lambda: data.BatchStream(images, 4, 0, 0, 1, labels=np.zeros(10, np.float32)),
                 "float32", "integers")


# ----------------------------------------------------------------------------------------------
# .npz


def _npz(tmp_path, **arrays):
  path = str(tmp_path / "set.npz")
  np.savez(path, **arrays)
  return path


def _tiny_images(count, size=4):
  images = np.zeros((count, size, size, 1), np.uint8)
  images[:, 0, 0, 0] = np.arange(count) * 7  # row i is recognizable by its first pixel
  return images


def test_npz_labels_are_the_named_integer_array(tmp_path):
  images, labels = _tiny_images(10), np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], np.int64)
  path = _npz(tmp_path, images=images, labels=labels, scores=np.linspace(0, 1, 10))
  config = data_config(source="npz", path=path, image_size=4, label_key="labels")
  got = data.load_labels(config)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, labels)
  np.testing.assert_array_equal(data.load_image_source(config), images)
  assert data.num_classes_in(got) == 10
  stream = data.BatchStream(data.load_image_source(config), 4, seed=1, process_index=0,
                            process_count=1, labels=got)
  batch = stream.batch(2)
  np.testing.assert_array_equal(batch["image"][:, 0, 0, 0] // 7, stream.indices(2))
  np.testing.assert_array_equal(batch["label"], labels[stream.indices(2)])
  # With npz_key naming the images among several image arrays.
  path = _npz(tmp_path, a=images, b=images[::-1], y=labels.astype(np.uint8))
  np.testing.assert_array_equal(
      data.load_labels(data_config(source="npz", path=path, image_size=4, npz_key="b",
                                   label_key="y")), labels)


def test_npz_label_errors_are_one_line(tmp_path):
  images = _tiny_images(10)
  path = _npz(tmp_path, images=images, labels=np.arange(10), other=np.arange(10, dtype=np.int16),
              scores=np.linspace(0, 1, 10))
  config = lambda key: data_config(source="npz", path=path, image_size=4, label_key=key)
  message = one_line_error(lambda: data.load_labels(config("label")), path, "label_key='label'",
                           "'labels'", "'other'")
  assert "scores" not in message  # only the integer 1-D arrays are offered
  one_line_error(lambda: data.load_labels(config("scores")), path, "'scores'", "float64",
                 "integers")
  one_line_error(lambda: data.load_labels(config("images")), "'images'", "image array")
  path = _npz(tmp_path, images=images, labels=np.arange(9))
  one_line_error(lambda: data.load_labels(config("labels")), path, "'labels'", "holds 9 labels",
                 "10")
  path = _npz(tmp_path, images=images, labels=np.eye(10, dtype=np.int32))
  one_line_error(lambda: data.load_labels(config("labels")), "(10, 10)", "1-D", "argmax")
  path = _npz(tmp_path, images=images, labels=np.arange(10) - 1)
  one_line_error(lambda: data.load_labels(config("labels")), "-1", "0..K-1")
  npy = str(tmp_path / "images.npy")
  np.save(npy, images)
  one_line_error(lambda: data.load_labels(data_config(source="npz", path=npy, image_size=4)),
                 npy, ".npz")


# ----------------------------------------------------------------------------------------------
# Folders


def _write_png(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((4, 4), value, np.uint8), "L").save(path)


def test_folder_labels_are_the_sorted_sub_folders_in_file_order(tmp_path):
  root = tmp_path / "pets"
  # (class folder, file, pixel value); "zebra" holds no images and is no class.
  files = [("cat", "b.png", 10), ("cat", "a.png", 11), ("ant", "x.png", 20), ("bee", "2.png", 30),
           ("bee", "1.png", 31), ("bee", "deeper/0.png", 32), ("ant", "y.jpg", 21)]
  for folder, name, value in files:
    _write_png(str(root / "train" / folder / name), value)
  os.makedirs(root / "train" / "zebra")
  config = data_config(source="folder", path=str(root), image_size=4)
  images = data.load_image_source(config)
  labels = data.load_labels(config)
  # _read_folder's order: sorted paths.
  order = sorted(files, key=lambda f: os.path.join(str(root / "train" / f[0]), f[1]))
  np.testing.assert_array_equal(images[:, 0, 0, 0], [value for _, _, value in order])
  classes = {"ant": 0, "bee": 1, "cat": 2}
  np.testing.assert_array_equal(labels, [classes[folder] for folder, _, _ in order])
  assert labels.dtype == np.int32 and list(labels) == [0, 0, 1, 1, 1, 2, 2]
  # A folder without the split level: its own sub-folders are the classes.
  flat = data_config(source="folder", path=str(root / "train"), split="test", image_size=4)
  np.testing.assert_array_equal(data.load_labels(flat), labels)
  one_line_error(lambda: data.load_labels(data_config(source="folder", path=str(root),
                                                      image_size=4, label_key="species")),
                 "'species'", "data.label_key='label'")


def test_folder_images_outside_a_class_folder_are_refused_in_one_line(tmp_path):
  _write_png(str(tmp_path / "train" / "cat" / "a.png"), 1)
  _write_png(str(tmp_path / "train" / "loose.png"), 2)
  one_line_error(lambda: data.load_labels(data_config(source="folder", path=str(tmp_path),
                                                      image_size=4)),
                 "'loose.png'", "class sub-folder")


def test_sources_without_labels_say_so_in_one_line(tmp_path):
  one_line_error(lambda: data.load_labels(data_config(kind="audio", source="folder",
                                                      path=str(tmp_path))),
                 "audio", "not supported")
  one_line_error(lambda: data.load_labels(data_config(source="idx", path=str(tmp_path))),
                 "'idx'", "npz")
  one_line_error(lambda: data.load_labels(data_config(source="npz", path=str(tmp_path / "no"))),
                 "does not exist")


# ----------------------------------------------------------------------------------------------
# TFDS sets (written by the test: no network)

TFDS_NAME = "jdiff_labeled_tiny"
TFDS_ROWS = 30
TFDS_CLASSES = 4


def _label_of(i):
  return (7 * i + 3) % TFDS_CLASSES


def _prepare_tfds(data_dir, file_format):
  """30 8x8 RGB images whose pixel [0, 0, 0] is their index i, with the label _label_of(i) and a
  float feature; TFDS shuffles the examples when it writes them."""
  import io  # pylint: disable=g-import-not-at-top
  tfds = pytest.importorskip("tensorflow_datasets")

  class JdiffLabeledTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(num_classes=TFDS_CLASSES),
          "score": tfds.features.Scalar(dtype=np.float32)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      rng = np.random.default_rng(2)
      for i in range(TFDS_ROWS):
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image[0, 0, 0] = i
        png = io.BytesIO()
        Image.fromarray(image).save(png, "PNG")
        png.seek(0)
        yield i, {"image": png, "label": _label_of(i), "score": i / 2}

  assert JdiffLabeledTiny.name == TFDS_NAME
  JdiffLabeledTiny(data_dir=str(data_dir), file_format=file_format).download_and_prepare()
  return str(data_dir)


@pytest.fixture(scope="module")
def array_record_set(tmp_path_factory):
  return _prepare_tfds(tmp_path_factory.mktemp("tfds_ar"), "array_record")


@pytest.fixture
def tfds_set(array_record_set, tmp_path, monkeypatch):
  """A fresh copy of the array_record set (no jdiff_cache yet), its name a TFDS source."""
  import shutil  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / "tfds")
  shutil.copytree(array_record_set, data_dir)
  monkeypatch.setattr(data, "TFDS_SOURCES", data.TFDS_SOURCES + (TFDS_NAME,))
  return data_dir


def _tfds_config(data_dir, streaming, label_key="label"):
  return data_config(source=TFDS_NAME, data_dir=data_dir, image_size=8, num_channels=3,
                     streaming=streaming, label_key=label_key)


def _check_aligned(images, labels):
  """Row r of the images is example i = its pixel [0, 0, 0]; its label must be _label_of(i)."""
  images = np.asarray(images)
  index = images[:, 0, 0, 0].astype(int)
  assert sorted(index) == list(range(TFDS_ROWS))
  assert list(index) != list(range(TFDS_ROWS))  # TFDS shuffled them: the order is tested
  np.testing.assert_array_equal(labels, [_label_of(i) for i in index])


def _no_image_decoding(monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise AssertionError("an image was decoded to read labels")
  monkeypatch.setattr(tfds.features.Image, "decode_example_np", refuse)
  monkeypatch.setattr(tfds.features.Image, "decode_example", refuse)


def test_tfds_labels_of_the_cache_are_aligned_and_cached_next_to_it(tfds_set, monkeypatch):
  config = _tfds_config(tfds_set, "never")
  images = data.load_image_source(config)
  assert isinstance(images, np.ndarray)
  with monkeypatch.context() as patch:
    _no_image_decoding(patch)
    labels = data.load_labels(config)
  assert labels.dtype == np.int32 and labels.shape == (TFDS_ROWS,)
  _check_aligned(images, labels)
  cache = os.path.join(tfds_set, "jdiff_cache")
  assert sorted(os.listdir(cache)) == [f"{TFDS_NAME}_train_8.npy",
                                       f"{TFDS_NAME}_train_label_labels.npy"]
  np.testing.assert_array_equal(np.load(os.path.join(cache, f"{TFDS_NAME}_train_label_labels.npy")),
                                labels)
  # The second time the cache answers: the set is not opened.
  monkeypatch.setattr(data, "_tfds_builder", lambda *args: pytest.fail("the set was read"))
  np.testing.assert_array_equal(data.load_labels(config), labels)
  stream = data.BatchStream(images, 8, seed=2, process_index=0, process_count=1, labels=labels)
  for step in range(5):  # 40 rows: crosses an epoch
    batch = stream.batch(step)
    indices = stream.indices(step)
    np.testing.assert_array_equal(batch["image"], images[indices])
    np.testing.assert_array_equal(batch["label"], labels[indices])
    np.testing.assert_array_equal(batch["label"], [_label_of(i) for i in batch["image"][:, 0, 0, 0]])


def test_tfds_labels_of_a_streamed_set_are_read_by_index(tfds_set, monkeypatch):
  config = _tfds_config(tfds_set, "always")
  source = data.load_image_source(config)
  assert isinstance(source, data.TfdsImages)
  with monkeypatch.context() as patch:
    _no_image_decoding(patch)
    some = source.labels([5, 0, 29, 5])
    labels = data.load_labels(config)
  assert some.dtype == np.int32
  np.testing.assert_array_equal(some, labels[[5, 0, 29, 5]])
  _check_aligned(source[:], labels)
  # Streaming decodes no image to disk; only the small label cache is written.
  assert os.listdir(os.path.join(tfds_set, "jdiff_cache")) == [
      f"{TFDS_NAME}_train_label_labels.npy"]
  # The prefetching stream gives the labels of its rows.
  stream = data.BatchStream(source, 8, seed=2, process_index=0, process_count=1, labels=labels)
  for step in (0, 1, 1, 2, 5, 3):  # asked again, then out of order
    batch = stream.batch(step)
    indices = stream.indices(step)
    np.testing.assert_array_equal(batch["image"], source[indices])
    np.testing.assert_array_equal(batch["label"], labels[indices])
    batch["label"][:] = -5  # the caller's copy: the stream's own is untouched
  np.testing.assert_array_equal(stream.batch(3)["label"], labels[stream.indices(3)])
  # The labels of the stream equal those of the cache.
  cached = _tfds_config(tfds_set, "never")
  np.testing.assert_array_equal(np.asarray(data.load_image_source(cached)), source[:])
  one_line_error(lambda: source.labels([0], "score"), "'score'", "not one integer", "'label'")
  one_line_error(lambda: source.labels([0], "lable"), "'lable'", "not a feature", "'label'")


def test_tfds_label_key_errors_are_one_line(tfds_set):
  one_line_error(lambda: data.load_labels(_tfds_config(tfds_set, "never", "score")),
                 TFDS_NAME, "'score'", "not one integer", "['label']")
  one_line_error(lambda: data.load_labels(_tfds_config(tfds_set, "always", "nope")),
                 "'nope'", "not a feature")


def test_tfds_labels_of_a_tfrecord_set_follow_tf_data_order(tmp_path, monkeypatch):
  data_dir = _prepare_tfds(tmp_path / "tfds", "tfrecord")
  monkeypatch.setattr(data, "TFDS_SOURCES", data.TFDS_SOURCES + (TFDS_NAME,))
  config = _tfds_config(data_dir, "never")
  images = data.load_image_source(config)
  labels = data.load_labels(config)
  assert labels.dtype == np.int32
  _check_aligned(images, labels)
  assert os.path.exists(os.path.join(data_dir, "jdiff_cache",
                                     f"{TFDS_NAME}_train_label_labels.npy"))
