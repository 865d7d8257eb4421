"""Image data: TFDS sets, sklearn digits, and local folders / .npz / idx files.

Every source becomes one uint8 array [N, H, W, C] (in memory, or a memory-mapped .npy cache
for large TFDS sets). Batches are drawn by index: the permutation of epoch e comes from
(seed, e), so the batch of step s is a pure function of (seed, s). That is what lets a resumed
run continue identically, and lets each process read only its own shard of the global batch.
Conversion to floats in [-1, 1] and random flips happen on the device, inside the train step.
"""

import gzip
import os
import socket
from typing import Iterator, Optional

import jax
import numpy as np
from absl import logging
from PIL import Image

TFDS_SOURCES = ("cifar10", "mnist", "fashion_mnist", "celeb_a")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DataError(RuntimeError):
  """A data set that is missing or unreadable; the message says what to do."""


def to_float(images_uint8):
  """uint8 [0, 255] -> float32 [-1, 1] (works on numpy and jax arrays)."""
  return images_uint8.astype(np.float32) / 127.5 - 1.0


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Square center crop, then area-averaging (PIL box) resize to size x size."""
  height, width = image.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  image = image[top:top + side, left:left + side]
  if side == size:
    return image
  mode = "L" if image.shape[-1] == 1 else "RGB"
  pil = Image.fromarray(image[..., 0] if mode == "L" else image, mode)
  resized = np.asarray(pil.resize((size, size), Image.Resampling.BOX))
  return resized.reshape(size, size, -1)


def _match_channels(images: np.ndarray, num_channels: int) -> np.ndarray:
  if images.shape[-1] == num_channels:
    return images
  if images.shape[-1] == 1 and num_channels == 3:
    return np.repeat(images, 3, axis=-1)
  if images.shape[-1] == 3 and num_channels == 1:
    gray = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.round(gray)[..., None].astype(np.uint8)
  raise DataError(f"images have {images.shape[-1]} channels; config.data.num_channels is {num_channels}")


def _fit(images: np.ndarray, image_size: int, num_channels: int) -> np.ndarray:
  """NHWC uint8 at image_size x image_size with num_channels."""
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8:
    raise DataError(f"images must be uint8, got {images.dtype}")
  images = _match_channels(images, num_channels)
  if images.shape[1:3] != (image_size, image_size):
    images = np.stack([center_crop_resize(image, image_size) for image in images])
  return images


def load_digits() -> np.ndarray:
  """scikit-learn's bundled 1797 8x8 digits (values 0..16) as uint8 [N, 8, 8, 1]."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits().images
  return np.round(digits * (255.0 / 16.0)).astype(np.uint8)[..., None]


def _read_idx(path: str) -> np.ndarray:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise DataError(f"{path}: not an idx file of uint8 (MNIST format)")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _read_npz(path: str, key: Optional[str]) -> np.ndarray:
  with np.load(path) as archive:
    if key:
      if key not in archive:
        raise DataError(f"{path}: no array {key!r}; it has {sorted(archive.keys())}")
      return archive[key]
    for name in ("images", "x", "train_x"):
      if name in archive:
        return archive[name]
    candidates = [k for k in archive.keys() if archive[k].dtype == np.uint8 and archive[k].ndim in (3, 4)]
    if not candidates:
      raise DataError(f"{path}: no uint8 image array [N,H,W(,C)]; set config.data.npz_key")
    return archive[candidates[0]]


def _read_folder(path: str, split: str, image_size: int, num_channels: int) -> np.ndarray:
  # The common layout root/<split>/<class>/*.jpg works as is; so does a flat folder.
  if os.path.isdir(os.path.join(path, split)):
    path = os.path.join(path, split)
  files = sorted(
      os.path.join(root, name) for root, _, names in os.walk(path) for name in names
      if name.lower().endswith(IMAGE_SUFFIXES))
  if not files:
    raise DataError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) found; "
                    "set config.data.path to a folder of images")
  mode = "L" if num_channels == 1 else "RGB"
  images = np.empty((len(files), image_size, image_size, num_channels), np.uint8)
  for i, file in enumerate(files):
    try:
      with Image.open(file) as image:
        array = np.asarray(image.convert(mode)).reshape(image.height, image.width, num_channels)
    except OSError as e:
      raise DataError(f"{file}: unreadable image ({e}); remove it or fix the folder") from e
    images[i] = center_crop_resize(array, image_size)
  return images


def _tfds_cache_path(name: str, split: str, image_size: int, data_dir: str) -> str:
  root = data_dir or os.path.expanduser("~/tensorflow_datasets")
  return os.path.join(root, "jdiff_cache", f"{name}_{split.replace(':', '_')}_{image_size}.npy")


def _load_tfds(name: str, split: str, image_size: int, num_channels: int, data_dir: str) -> np.ndarray:
  """Decodes a TFDS split once into a uint8 .npy cache (memory-mapped afterwards)."""
  cache = _tfds_cache_path(name, split, image_size, data_dir)
  if os.path.exists(cache):
    return np.load(cache, mmap_mode="r")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    builder.download_and_prepare()
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    count = builder.info.splits[split].num_examples
  except Exception as e:  # TFDS raises many types for missing data / no network.
    raise DataError(
        f"TFDS data set {name!r} (split {split!r}) could not be loaded: {str(e).splitlines()[0]}. "
        "Download it where there is network (tfds build " + name + "), point config.data.data_dir "
        "at it, or use data.source=folder/npz with a local copy.") from e
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  # Several processes (one per node of a multi-host run, or per GPU) may decode into a shared
  # data_dir at once: each writes its own partial file; the atomic rename makes one of them the cache.
  partial = f"{cache}.partial-{socket.gethostname()}-{os.getpid()}.npy"
  out = np.lib.format.open_memmap(partial, "w+", np.uint8, (count, image_size, image_size, num_channels))
  for i, example in enumerate(tfds.as_numpy(dataset)):
    out[i] = _fit(example["image"][None], image_size, num_channels)[0]
    if i % 10000 == 0:
      logging.info("decoding %s: %d / %d", name, i, count)
  out.flush()
  del out
  os.replace(partial, cache)
  return np.load(cache, mmap_mode="r")


def load_images(data_config) -> np.ndarray:
  """uint8 [N, H, W, C] for config.data; raises DataError with what to do on failure."""
  source, size, channels = data_config.source, data_config.image_size, data_config.num_channels
  path = data_config.get("path", "")
  if source == "digits":
    images = load_digits()
  elif source in TFDS_SOURCES:
    return _load_tfds(source, data_config.split, size, channels, data_config.get("data_dir", ""))
  else:
    if not os.path.exists(path):
      raise DataError(f"config.data.path={path!r}: does not exist (data.source={source!r})")
    try:
      if source == "folder":
        return _read_folder(path, data_config.split, size, channels)
      if source == "npz":
        images = _read_npz(path, data_config.get("npz_key", ""))
      elif source == "idx":
        images = _read_idx(path)
      else:
        raise DataError(f"config.data.source={source!r}: unknown")
    except (OSError, ValueError) as e:
      raise DataError(f"{path}: unreadable as data.source={source!r} ({e})") from e
  return _fit(np.asarray(images), size, channels)


class BatchStream:
  """Deterministic batches by index; each process gets its rows of every global batch."""

  def __init__(self, images: np.ndarray, global_batch_size: int, seed: int,
               process_index: Optional[int] = None, process_count: Optional[int] = None):
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
      raise ValueError(f"batch size {global_batch_size} not divisible by {process_count} processes")
    if len(images) == 0:
      raise DataError("the data set is empty")
    self.images = images
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.process_index = process_index
    self.seed = seed
    self._permutations = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      self._permutations = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.images))}
    return self._permutations[epoch]

  def indices(self, step: int) -> np.ndarray:
    """Indices of this process's rows of the global batch of `step`."""
    start = step * self.global_batch_size + self.process_index * self.local_batch_size
    positions = np.arange(start, start + self.local_batch_size)
    epochs, offsets = np.divmod(positions, len(self.images))
    return np.array([self._permutation(e)[o] for e, o in zip(epochs, offsets)])

  def batch(self, step: int) -> np.ndarray:
    indices = self.indices(step)
    order = np.argsort(indices)  # sorted reads are faster on a memory map
    batch = np.empty((len(indices),) + self.images.shape[1:], np.uint8)
    batch[order] = self.images[indices[order]]
    return batch

  def iterate(self, start_step: int) -> Iterator[np.ndarray]:
    step = start_step
    while True:
      yield self.batch(step)
      step += 1
