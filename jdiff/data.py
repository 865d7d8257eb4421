"""Image data: TFDS sets, sklearn digits, and local folders / .npz / idx files.

Every source becomes one uint8 array [N, H, W, C] (in memory, or a memory-mapped .npy cache
for TFDS sets), or, for large TFDS sets stored as array_record (config.data.streaming), a
random-access `TfdsImages` that reads and decodes only the rows asked for. Batches are drawn by
index: the permutation of epoch e comes from (seed, e), so the batch of step s is a pure function
of (seed, s), whichever of the two holds the images. That is what lets a resumed run continue
identically, and lets each process read only its own shard of the global batch.
Conversion to floats in [-1, 1] and random flips happen on the device, inside the train step.
"""

import concurrent.futures
import gzip
import os
import socket
import zipfile
import zlib
from typing import Iterator, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from absl import logging
from PIL import Image

from jdiff import audio
from jdiff import choices
from jdiff import files
from jdiff.errors import DataError
from jdiff.errors import WorkdirError

TFDS_SOURCES = choices.TFDS_SOURCES
STREAMING = ("auto", "always", "never")  # config.data.streaming (config_lib validates it)
# data.streaming='auto' streams a TFDS split (stored as array_record) whose decoded uint8 images
# would take more than this; smaller splits are decoded once into the .npy cache.
STREAM_ABOVE_BYTES = 2 * 1024 ** 3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
NPZ_CONVENTIONAL_KEYS = ("images", "x", "train_x")  # used, in this order, when data.npz_key is ""
EXPECTED_IMAGES = "expected uint8 images [N, H, W] or [N, H, W, C] with C = 1 or 3"
# What reading a damaged or foreign file through np.load / zipfile / gzip can raise.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, NotImplementedError)


def to_float(images_uint8):
  """uint8 [0, 255] -> float32 [-1, 1]; int16 audio -> x / 32768 (numpy and jax arrays)."""
  if images_uint8.dtype == np.int16:
    return audio.to_float(images_uint8)
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


def _short(error: BaseException) -> str:
  """The first line of an exception's message (its type name if it has none), for one-line errors."""
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= 160 else text[:157] + "..."


def _image_problem(shape: Sequence[int], dtype: np.dtype) -> Optional[str]:
  """None for a valid image array (uint8 [N, H, W] or [N, H, W, C], C in {1, 3}, N > 0), else
  what is wrong with it and how to fix it ("" when there is nothing more to say)."""
  hints = []
  ndim = len(shape)
  if ndim <= 2:
    hints.append(f"rank {ndim}: reshape flattened images to [N, H, W], or make one image x[None]"
                 if ndim == 2 else f"rank {ndim}")
  elif ndim >= 5:
    hints.append(f"rank {ndim}")
  elif ndim == 4 and shape[-1] not in (1, 3):
    if shape[1] in (1, 3):
      hints.append(f"{shape[-1]} channels: channels-first? use x.transpose(0, 2, 3, 1)")
    elif shape[-1] == 4:
      hints.append("4 channels: RGBA? drop alpha with x[..., :3]")
    else:
      hints.append(f"{shape[-1]} channels")
  if dtype != np.uint8:
    if dtype.kind == "f":
      hints.append(f"{dtype} values: convert to uint8 0..255, e.g. with "
                   "(x * 255).round().astype(np.uint8) if they are in [0, 1]")
    elif dtype.kind in "iub":
      hints.append(f"{dtype} values: convert with x.astype(np.uint8) if they are 0..255")
    elif dtype.kind == "O":
      hints.append("object arrays (pickled Python objects) are not loaded")
    else:
      hints.append(f"{dtype} values")
  if 3 <= ndim <= 4 and shape[0] == 0:
    hints.append("N = 0: it holds no images")
  if not hints and ndim in (3, 4) and dtype == np.uint8:
    return None
  return "; ".join(hints)


def _check_images(shape: Sequence[int], dtype: np.dtype, where: str, also: str = "") -> None:
  """Raises DataError "<where> has shape (...) dtype ...; expected ..." unless a valid image array."""
  problem = _image_problem(shape, dtype)
  if problem is not None:
    detail = f" ({problem})" if problem else ""
    raise DataError(f"{where} has shape {tuple(int(n) for n in shape)} dtype {dtype}; "
                    f"{EXPECTED_IMAGES}{detail}{also}")


def _fit(images: np.ndarray, image_size: int, num_channels: int, where: str = "images") -> np.ndarray:
  """NHWC uint8 at image_size x image_size with num_channels; `where` names the array in errors."""
  _check_images(images.shape, images.dtype, where)
  if images.ndim == 3:
    images = images[..., None]
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
  offset = 4 + 4 * ndim
  if len(data) < offset or len(data) - offset != int(np.prod(shape)):
    raise DataError(f"{path}: idx header says shape {shape} ({int(np.prod(shape))} bytes); the file "
                    f"holds {max(len(data) - offset, 0)} bytes after it (truncated or damaged?)")
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def _npy_header(f) -> Tuple[Tuple[int, ...], np.dtype]:
  """(shape, dtype) from the header of an open .npy stream, without reading the data."""
  version = np.lib.format.read_magic(f)
  read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
          else np.lib.format.read_array_header_2_0)
  shape, _, dtype = read(f)
  return tuple(int(n) for n in shape), np.dtype(dtype)


def _npz_headers(archive) -> dict:
  """{array name: (shape, dtype), or None if the member is not a .npy array}, without loading data."""
  members = set(archive.zip.namelist())
  headers = {}
  for name in archive.files:
    try:
      with archive.zip.open(name + ".npy" if name + ".npy" in members else name) as f:
        headers[name] = _npy_header(f)
    except _READ_ERRORS:
      headers[name] = None
  return headers


def _describe_arrays(headers: dict, names: Sequence[str], limit: int = 8) -> str:
  parts = [f"{name!r} " + (f"{headers[name][0]} {headers[name][1]}" if headers[name] else
                           "(not a .npy array)") for name in names[:limit]]
  if len(names) > limit:
    parts.append(f"and {len(names) - limit} more")
  return ", ".join(parts)


def _choose_npz_array(path: str, headers: dict, key: str) -> str:
  """The name of the array of an .npz archive to train on; see config.data.npz_key."""
  names = list(headers)
  if key:
    if key not in headers:
      raise DataError(f"{path}: config.data.npz_key={key!r} is not an array of this file; it has "
                      f"{_describe_arrays(headers, names) if names else 'no arrays'}")
    return key
  for name in NPZ_CONVENTIONAL_KEYS:
    if name in headers:
      return name
  images = [n for n in names if headers[n] and _image_problem(*headers[n]) is None]
  if len(images) == 1:
    return images[0]
  if len(images) > 1:
    raise DataError(f"{path}: holds several image arrays ({_describe_arrays(headers, images)}) and none "
                    f"is named {'/'.join(NPZ_CONVENTIONAL_KEYS)}; set config.data.npz_key to one of "
                    f"them (e.g. --config.data.npz_key={images[0]})")
  if len(names) == 1:  # the only array: its own check says precisely what is wrong with it
    return names[0]
  holds = f"it holds {_describe_arrays(headers, names)}" if names else "it holds no arrays"
  raise DataError(f"{path}: no image array ({holds}); {EXPECTED_IMAGES}")


def _sniff(path: str) -> str:
  """'npz', 'npy', or why the file is neither (read from its first bytes)."""
  try:
    with open(path, "rb") as f:
      head = f.read(6)
  except OSError as e:
    raise DataError(f"{path}: unreadable ({e.strerror or _short(e)}); data.source='npz' needs a "
                    ".npz or .npy file") from e
  if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
    return "npz"
  if head == b"\x93NUMPY":
    return "npy"
  if not head:
    return "the file is empty"
  if head[:1] == b"\x80":
    return "it is a Python pickle, which jdiff does not load"
  return "it starts with neither the zip nor the .npy signature"


def _read_npz(path: str, key: str) -> Tuple[np.ndarray, str]:
  """The image array of an .npz archive (or of a .npy file) and how to name it in errors."""
  not_numpy = f"{path}: not a NumPy .npz archive (np.savez) or .npy file"
  if os.path.isdir(path):
    raise DataError(f"{path}: is a folder; data.source='npz' needs a .npz or .npy file "
                    "(use data.source='folder' for a folder of images)")
  kind = _sniff(path)
  if kind not in ("npz", "npy"):
    raise DataError(f"{not_numpy} ({kind})")
  if kind == "npy":  # check the header first: an object array must fail on its dtype, not on mmap
    try:
      with open(path, "rb") as f:
        header = _npy_header(f)
    except _READ_ERRORS as e:
      raise DataError(f"{not_numpy} ({_short(e)})") from e
    _check_images(*header, f"{path}: the .npy array")
  try:
    loaded = np.load(path, mmap_mode="r" if kind == "npy" else None, allow_pickle=False)
  except _READ_ERRORS as e:
    raise DataError(f"{not_numpy} ({_short(e)})") from e
  if isinstance(loaded, np.ndarray):
    if key:
      logging.warning("data: config.data.npz_key=%r ignored: %s is a .npy file (one array)", key, path)
    logging.info("data: read the .npy file %s: shape %s dtype %s", path, loaded.shape, loaded.dtype)
    return loaded, f"{path}: the .npy array"
  with loaded as archive:
    try:
      headers = _npz_headers(archive)
    except _READ_ERRORS as e:
      raise DataError(f"{not_numpy} ({_short(e)})") from e
    name = _choose_npz_array(path, headers, key)
    where = f"{path}: array {name!r}"
    if headers[name] is None:
      raise DataError(f"{where} is not a .npy array (np.savez writes one per array); {EXPECTED_IMAGES}")
    others = [n for n in headers if n != name and headers[n] and _image_problem(*headers[n]) is None]
    also = (f"; or set config.data.npz_key to one of {others} (image arrays of this file)"
            if others else "")
    _check_images(*headers[name], where, also)
    try:
      images = archive[name]
    except _READ_ERRORS as e:
      raise DataError(f"{where}: unreadable ({_short(e)}); the file is damaged") from e
  logging.info("data: using array %r of %s: shape %s dtype %s", name, path, images.shape, images.dtype)
  return images, where


def _folder_files(path: str, split: str) -> Tuple[str, list]:
  """(the folder read, its image files in the order of the data set: sorted paths)."""
  # The common layout root/<split>/<class>/*.jpg works as is; so does a flat folder.
  if os.path.isdir(os.path.join(path, split)):
    path = os.path.join(path, split)
  files = sorted(
      os.path.join(root, name) for root, _, names in os.walk(path) for name in names
      if name.lower().endswith(IMAGE_SUFFIXES))
  if not files:
    raise DataError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) found; "
                    "set config.data.path to a folder of images")
  return path, files


def _read_folder(path: str, split: str, image_size: int, num_channels: int) -> np.ndarray:
  _, files = _folder_files(path, split)
  images = np.empty((len(files), image_size, image_size, num_channels), np.uint8)
  for i, file in enumerate(files):
    try:
      with Image.open(file) as image:
        array = _image_as_uint8(image, num_channels, file)
    except OSError as e:
      raise DataError(f"{file}: unreadable image ({e}); remove it or fix the folder") from e
    images[i] = center_crop_resize(array, image_size)
  return images


def _image_as_uint8(image: Image.Image, num_channels: int, file: str) -> np.ndarray:
  """uint8 [H, W, num_channels] of a PIL image. 16-bit grayscale (PNG's I;16) is scaled to 8 bits
  (x / 257, rounded), where Pillow's convert("L") would clip it to 255; 32-bit integer or float
  images have no known range and are refused."""
  if image.mode.startswith("I;16"):
    wide = np.asarray(image).astype(np.float64)
    image = Image.fromarray(np.round(wide / 257.0).astype(np.uint8), "L")
  elif image.mode in ("I", "F"):
    raise DataError(f"{file}: {'32-bit integer' if image.mode == 'I' else 'floating-point'} pixels "
                    "(PIL mode " + image.mode + ") have no known range; convert the image to 8- or "
                    "16-bit PNG/JPEG")
  mode = "L" if num_channels == 1 else "RGB"
  return np.asarray(image.convert(mode)).reshape(image.height, image.width, num_channels)


def _tfds_cache_path(name: str, split: str, image_size: int, data_dir: str) -> str:
  root = data_dir or os.path.expanduser("~/tensorflow_datasets")
  return os.path.join(root, "jdiff_cache", f"{name}_{split.replace(':', '_')}_{image_size}.npy")


def _tfds_builder(name: str, split: str, data_dir: str, file_format: Optional[str]):
  """(prepared TFDS builder, number of examples of `split`). A set not prepared yet is prepared in
  `file_format` (None: TFDS's default); a prepared one is read in the format it was written in."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    if file_format is None:
      builder.download_and_prepare()  # nothing to do for a prepared set
    elif not builder.is_prepared():
      builder.download_and_prepare(file_format=file_format)
    count = builder.info.splits[split].num_examples
  except Exception as e:  # TFDS raises many types for missing data / no network.
    raise DataError(
        f"TFDS data set {name!r} (split {split!r}) could not be loaded: {_short(e)}. "
        "Download it where there is network (tfds build " + name + "), point config.data.data_dir "
        "at it, or use data.source=folder/npz with a local copy.") from e
  return builder, count


def _random_access(builder) -> bool:
  """Whether the prepared set is stored in a format TFDS reads by index (array_record); False
  with a TFDS too old to read by index."""
  formats = getattr(builder.info, "available_file_formats", None)
  if formats is None:
    return False
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
  return bool(formats() & file_adapters.FileFormat.with_random_access())


def _file_format(builder) -> str:
  """The name of the file format a prepared set is stored in ('tfrecord', 'array_record', ...)."""
  file_format = getattr(builder.info, "file_format", None)
  return str(getattr(file_format, "value", file_format or "an unknown format"))


class TfdsImages:
  """A TFDS split read by index (array_record files), as uint8 [N, size, size, C].

  Nothing is decoded up front and nothing is written: `images[indices]` reads those records,
  decodes their images and fits them (center crop, box resize, channels: `_fit`), in a few threads.
  BatchStream asks each process only for its rows of each global batch.
  """

  def __init__(self, builder, name: str, split: str, image_size: int, num_channels: int,
               threads: Optional[int] = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._records = builder.as_data_source(
        split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    self._features = builder.info.features
    self.name, self.split = name, split
    self.shape = (len(self._records), image_size, image_size, num_channels)
    self.dtype = np.dtype(np.uint8)
    self.ndim = 4
    self._threads = threads or min(8, os.cpu_count() or 1)
    self._pool = None

  def __len__(self) -> int:
    return self.shape[0]

  def _image(self, index: int, record: bytes) -> np.ndarray:
    image = self._features.deserialize_example_np(record)["image"]
    return _fit(np.asarray(image)[None], self.shape[1], self.shape[3],
                f"TFDS {self.name!r} image {index}")[0]

  def read(self, indices: Sequence[int]) -> np.ndarray:
    """uint8 [len(indices), size, size, C]: the images of these rows, in this order."""
    indices = [int(i) for i in indices]
    for i in indices:
      if not 0 <= i < len(self):
        raise IndexError(f"row {i} of TFDS {self.name!r} split {self.split!r} ({len(self)} rows)")
    out = np.empty((len(indices),) + self.shape[1:], np.uint8)
    if not indices:
      return out
    records = self._records.__getitems__(indices)
    if self._pool is None and self._threads > 1 and len(indices) > 1:
      self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, "jdiff-decode")
    images = (self._pool.map(self._image, indices, records) if self._pool is not None
              else map(self._image, indices, records))
    for row, image in enumerate(images):
      out[row] = image
    return out

  def labels(self, indices: Sequence[int], label_key: str = "label") -> np.ndarray:
    """int32 [len(indices)]: feature `label_key` of these rows, in this order. Their images are
    not decoded (each record is parsed; every feature but the label is left as stored)."""
    where = f"TFDS {self.name!r} split {self.split!r}"
    decoders = _skip_all_but(self._features, label_key, where)
    indices = [int(i) for i in indices]
    for i in indices:
      if not 0 <= i < len(self):
        raise IndexError(f"row {i} of {where} ({len(self)} rows)")
    values = []
    chunk = 4096
    for start in range(0, len(indices), chunk):
      records = self._records.__getitems__(indices[start:start + chunk])
      values.extend(self._features.deserialize_example_np(record, decoders=decoders)[label_key]
                    for record in records)
    return _as_labels(np.asarray(values, dtype=None if values else np.int32),
                      f"{where}: feature {label_key!r}")

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, slice):
      return self.read(range(*key.indices(len(self))))
    if np.ndim(key) == 0:
      return self.read([key])[0]
    return self.read(np.asarray(key).reshape(-1)).reshape(np.shape(key) + self.shape[1:])

  def __array__(self, dtype=None, copy=None):  # np.asarray(images): decodes the whole split
    del copy
    images = self.read(range(len(self)))
    return images if dtype is None else images.astype(dtype)


def _decode_to_cache(builder, name: str, split: str, count: int, image_size: int,
                     num_channels: int, cache: str) -> np.ndarray:
  """Decodes the whole split once into the uint8 .npy `cache`; returns it memory-mapped."""
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  # Several processes (one per node of a multi-host run, or per GPU) may decode into a shared
  # data_dir at once: each writes its own partial file; the atomic rename makes one of them the cache.
  partial = f"{cache}.partial-{socket.gethostname()}-{os.getpid()}.npy"
  out = np.lib.format.open_memmap(partial, "w+", np.uint8, (count, image_size, image_size, num_channels))
  if _random_access(builder):  # array_record: tf.data cannot read it; read it by index
    source = TfdsImages(builder, name, split, image_size, num_channels)
    chunk = 1024
    for start in range(0, count, chunk):
      out[start:start + chunk] = source.read(range(start, min(start + chunk, count)))
      logging.info("decoding %s: %d / %d", name, min(start + chunk, count), count)
  else:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    for i, example in enumerate(tfds.as_numpy(dataset)):
      out[i] = _fit(example["image"][None], image_size, num_channels, f"TFDS {name!r} image {i}")[0]
      if i % 10000 == 0:
        logging.info("decoding %s: %d / %d", name, i, count)
  out.flush()
  del out
  os.replace(partial, cache)
  return np.load(cache, mmap_mode="r")


def _load_tfds(name: str, split: str, image_size: int, num_channels: int, data_dir: str,
               streaming: str = "never", prepare_as: Optional[str] = None
               ) -> Union[np.ndarray, TfdsImages]:
  """A TFDS split: streamed by index (TfdsImages) or decoded once into a uint8 .npy cache
  (memory-mapped afterwards), as config.data.streaming says:
    never:  the cache;
    always: stream; the set must be stored as array_record;
    auto:   an existing cache if there is one; else stream when the decoded split would exceed
            STREAM_ABOVE_BYTES and the set is array_record, else the cache.
  A set not prepared yet is prepared as array_record when streaming is 'always', else in
  prepare_as (None: TFDS's default, which may be its prebuilt tfrecord copy); the cache reads
  either format. To stream a large set with 'auto', prepare it as array_record first
  (tfds build NAME --file_format=array_record).
  """
  if streaming not in STREAMING:
    raise DataError(f"config.data.streaming={streaming!r}: expected one of {list(STREAMING)}")
  cache = _tfds_cache_path(name, split, image_size, data_dir)
  if streaming != "always":
    cached = files.load_npy_cache(cache)
    if cached is not None:
      return cached
  builder, count = _tfds_builder(name, split, data_dir,
                                 "array_record" if streaming == "always" else prepare_as)
  decoded_bytes = count * image_size * image_size * num_channels
  if streaming != "never":
    random_access = _random_access(builder)
    if streaming == "always" and not random_access:
      raise DataError(
          f"config.data.streaming='always': TFDS {name!r} at {builder.data_dir} is stored as "
          f"{_file_format(builder)}, which has no random access; prepare it as array_record in "
          f"another data_dir (tfds build {name} --file_format=array_record --data_dir=DIR, then "
          "config.data.data_dir=DIR; or tfds convert_format, which needs apache-beam), or set "
          "data.streaming='auto' to decode it into the .npy cache")
    if streaming == "always" or (random_access and decoded_bytes > STREAM_ABOVE_BYTES):
      logging.info("data: streaming TFDS %s split %s (%d images, %.1f GB decoded) from %s",
                   name, split, count, decoded_bytes / 1e9, builder.data_dir)
      return TfdsImages(builder, name, split, image_size, num_channels)
    if decoded_bytes > STREAM_ABOVE_BYTES:
      logging.warning("data: TFDS %s at %s is stored as %s (no random access): decoding all %.1f GB "
                      "into %s instead of streaming (prepare it as array_record to stream)",
                      name, builder.data_dir, _file_format(builder), decoded_bytes / 1e9,
                      cache)
  return _decode_to_cache(builder, name, split, count, image_size, num_channels, cache)


def load_images(data_config) -> np.ndarray:
  """uint8 [N, H, W, C] for config.data (int16 [N, L, 1] for data.kind='audio', jdiff.audio);
  raises DataError with what to do on failure."""
  if data_config.get("kind", "image") == "audio":
    return audio.load_audio(data_config)
  source, size, channels = data_config.source, data_config.image_size, data_config.num_channels
  path = data_config.get("path", "")
  if source == "digits":
    images, where = load_digits(), "sklearn digits"
  elif source in TFDS_SOURCES:
    prepare_as = "array_record" if data_config.get("streaming", "auto") == "always" else None
    return _load_tfds(source, data_config.split, size, channels, data_config.get("data_dir", ""),
                      prepare_as=prepare_as)
  else:
    if not os.path.exists(path):
      raise DataError(f"config.data.path={path!r}: does not exist (data.source={source!r})")
    try:
      if source == "folder":
        return _read_folder(path, data_config.split, size, channels)
      if source == "npz":
        images, where = _read_npz(path, data_config.get("npz_key", ""))
      elif source == "idx":
        images, where = _read_idx(path), f"{path}: the idx array"
      else:
        raise DataError(f"config.data.source={source!r}: unknown")
    except _READ_ERRORS as e:
      raise DataError(f"{path}: unreadable as data.source={source!r} ({_short(e)})") from e
  return _fit(images, size, channels, where)


def load_image_source(data_config) -> Union[np.ndarray, TfdsImages]:
  """What BatchStream draws from for config.data: load_images' array, except for a TFDS set that
  config.data.streaming streams (a TfdsImages read by index; see _load_tfds)."""
  if data_config.get("kind", "image") != "audio" and data_config.source in TFDS_SOURCES:
    return _load_tfds(data_config.source, data_config.split, data_config.image_size,
                      data_config.num_channels, data_config.get("data_dir", ""),
                      data_config.get("streaming", "auto"))
  return load_images(data_config)


# ----------------------------------------------------------------------------------------------
# Class labels (config.data.label_key), row for row with load_image_source's images


def num_classes_in(labels: np.ndarray) -> int:
  """The number of classes that labels 0..K-1 imply: max + 1 (0 for no labels)."""
  return int(np.max(labels)) + 1 if len(labels) else 0


def _check_labels(shape: Sequence[int], dtype: np.dtype, where: str,
                  count: Optional[int] = None, of_what: str = "images") -> None:
  """Raises a one-line DataError unless (shape, dtype) is integer [count] (the labels' header)."""
  dtype = np.dtype(dtype)
  shape = tuple(int(n) for n in shape)
  if dtype.kind not in "iu":
    hint = (" (y.astype(np.int32) if they are whole numbers)" if dtype.kind == "f" else
            " (y.astype(np.int32))" if dtype.kind == "b" else "")
    raise DataError(f"{where} has dtype {dtype}; class labels must be integers 0..K-1{hint}")
  if len(shape) != 1:
    hint = (" (y.reshape(-1))" if len(shape) == 2 and shape[1] == 1 else
            " (one-hot? y.argmax(-1))" if len(shape) == 2 else "")
    raise DataError(f"{where} has shape {shape}; class labels must be 1-D [N], one integer per "
                    f"image{hint}")
  if count is not None and shape[0] != count:
    raise DataError(f"{where} holds {shape[0]} labels; the {of_what} are {count} (one label per "
                    "image, in the same order)")


def _as_labels(values, where: str, count: Optional[int] = None,
               of_what: str = "images") -> np.ndarray:
  """int32 [N] class labels 0..K-1 from `values`, or a one-line DataError naming `where`."""
  values = np.asarray(values)
  _check_labels(values.shape, values.dtype, where, count, of_what)
  if len(values) and (values.min() < 0 or values.max() > np.iinfo(np.int32).max):
    raise DataError(f"{where}: labels range from {values.min()} to {values.max()}; class labels "
                    "must be 0..K-1")
  return values.astype(np.int32)


def _only_label(label_key: str, source: str, what: str) -> None:
  if label_key != "label":
    raise DataError(f"config.data.label_key={label_key!r}: data.source={source!r} has one class "
                    f"label, {what}; set data.label_key='label' (or '' for none)")


def _integer_scalar_features(features) -> list:
  """Names of the top-level TFDS features that are one integer (class labels and the like)."""
  names = []
  for name, feature in features.items():
    try:  # nested features (FeaturesDict, Sequence) have a dict of dtypes / shapes
      dtype, shape = np.dtype(feature.np_dtype), tuple(feature.shape)
    except (AttributeError, TypeError, ValueError):
      continue
    if dtype.kind in "iu" and shape == ():
      names.append(name)
  return names


def _skip_all_but(features, label_key: str, where: str) -> dict:
  """TFDS decoders that leave every top-level image feature undecoded (for reading the label
  `label_key` alone); a one-line DataError unless `label_key` is an integer scalar feature."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  integers = _integer_scalar_features(features)
  if label_key not in integers:
    what = ("is not one integer" if label_key in features.keys() else "is not a feature")
    raise DataError(f"{where}: config.data.label_key={label_key!r} {what}; its integer features: "
                    f"{integers or 'none'} (features: {sorted(features.keys())})")
  return {name: tfds.decode.SkipDecoding() for name, feature in features.items()
          if name != label_key and isinstance(feature, tfds.features.Image)}


def _tfds_labels_path(name: str, split: str, label_key: str, data_dir: str) -> str:
  """The label cache, next to the image caches (_tfds_cache_path); labels fit every image size."""
  safe_key = "".join(c if c.isalnum() or c in "-." else "_" for c in label_key)
  root = os.path.dirname(_tfds_cache_path(name, split, 0, data_dir))
  return os.path.join(root, f"{name}_{split.replace(':', '_')}_{safe_key}_labels.npy")


def _read_tfds_labels(builder, name: str, split: str, count: int, label_key: str,
                      image_size: int, num_channels: int) -> np.ndarray:
  """int32 [count]: feature `label_key` of every example, in the order the images are read
  (by index from array_record; else tf.data's file order, as _decode_to_cache reads them),
  without decoding any image."""
  where = f"TFDS {name!r} split {split!r}"
  if _random_access(builder):
    labels = TfdsImages(builder, name, split, image_size, num_channels).labels(range(count),
                                                                               label_key)
  else:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    _skip_all_but(builder.info.features, label_key, where)
    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders=tfds.decode.PartialDecoding({label_key: True}))
    labels = [example[label_key] for example in tfds.as_numpy(dataset)]
    labels = np.asarray(labels, dtype=None if labels else np.int32)
  return _as_labels(labels, f"{where}: feature {label_key!r}", count, "examples of the split")


def _load_tfds_labels(data_config, label_key: str) -> np.ndarray:
  """The labels of a TFDS split: its label cache, or read once from the records (streamed or
  not, the images are in the same order) and written to the cache. A data_dir where the cache
  cannot be written (a read-only copy, for streaming) only costs reading them again next time."""
  name, split = data_config.source, data_config.split
  data_dir, streaming = data_config.get("data_dir", ""), data_config.get("streaming", "auto")
  if streaming not in STREAMING:
    raise DataError(f"config.data.streaming={streaming!r}: expected one of {list(STREAMING)}")
  cache = _tfds_labels_path(name, split, label_key, data_dir)
  cached = files.load_npy_cache(cache)
  if cached is not None:
    try:
      return _as_labels(np.array(cached), f"the label cache {cache}")
    except DataError as e:
      logging.warning("data: %s; making it again", e)
  builder, count = _tfds_builder(name, split, data_dir,
                                 "array_record" if streaming == "always" else None)
  labels = _read_tfds_labels(builder, name, split, count, label_key, data_config.image_size,
                             data_config.num_channels)
  try:
    files.save_npy(cache, labels)
  except (WorkdirError, OSError) as e:
    logging.warning("data: labels not cached (%s); they are read from the records each time",
                    _short(e))
  return labels


def _read_npz_labels(path: str, label_key: str, npz_key: str) -> np.ndarray:
  """The integer array `label_key` of an .npz archive, checked against its image array."""
  kind = _sniff(path)
  if kind == "npy":
    raise DataError(f"{path}: a .npy file holds one array (the images); config.data.label_key="
                    f"{label_key!r} needs an .npz archive that also holds the labels "
                    f"(np.savez(path, images=x, {label_key}=y))")
  if kind != "npz":
    raise DataError(f"{path}: not a NumPy .npz archive (np.savez) or .npy file ({kind})")
  with np.load(path, allow_pickle=False) as archive:
    headers = _npz_headers(archive)
    images = _choose_npz_array(path, headers, npz_key)
    count = headers[images][0][0] if headers[images] and headers[images][0] else None
    integers = [n for n in headers if n != images and headers[n] and len(headers[n][0]) == 1
                and headers[n][1].kind in "iu"]
    where = f"{path}: array {label_key!r}"
    if label_key not in headers:
      has = (f"its integer 1-D arrays: {_describe_arrays(headers, integers)}" if integers else
             f"it has no integer 1-D array ({_describe_arrays(headers, list(headers))})")
      raise DataError(f"{path}: config.data.label_key={label_key!r} is not an array of this file; "
                      f"{has}")
    if label_key == images:
      raise DataError(f"{where} is the image array; set config.data.label_key to its label array "
                      f"({_describe_arrays(headers, integers) if integers else 'none found'})")
    if headers[label_key] is None:
      raise DataError(f"{where} is not a .npy array (np.savez writes one per array)")
    _check_labels(*headers[label_key], where, count, f"images of array {images!r}")
    labels = archive[label_key]
  return _as_labels(labels, where, count, f"images of array {images!r}")


def _folder_labels(path: str, split: str) -> np.ndarray:
  """The class of each image of _read_folder (same order): the sub-folder of the folder read
  (<path>/<split> or <path>) that holds it; classes numbered in sorted order of their names."""
  root, image_files = _folder_files(path, split)
  parts = [os.path.relpath(file, root).split(os.sep) for file in image_files]
  loose = [p[0] for p in parts if len(p) == 1]
  if loose:
    raise DataError(f"{root}: {len(loose)} image files (e.g. {loose[0]!r}) lie in the folder "
                    "itself, not in a class sub-folder; config.data.label_key='label' takes each "
                    "image's class from <folder>/<class>/: move them into one, or set "
                    "data.label_key=''")
  classes = sorted({p[0] for p in parts})
  number = {name: i for i, name in enumerate(classes)}
  shown = ", ".join(f"{i}={name}" for i, name in enumerate(classes[:20]))
  logging.info("data: %d classes, the sub-folders of %s: %s%s", len(classes), root, shown,
               ", ..." if len(classes) > 20 else "")
  return np.array([number[p[0]] for p in parts], np.int32)


def load_labels(data_config) -> Optional[np.ndarray]:
  """int32 [N] class labels of config.data, row for row with load_image_source(data_config);
  None when config.data.label_key is "" (unconditional). Raises DataError with what to do.

  label_key 'label': sklearn digits' target; a folder's classes (its sub-folders, sorted by name).
  TFDS sets: the feature named label_key (read without decoding images, cached next to the image
  cache). data.source=npz: the integer array of that name in the archive.
  """
  label_key = data_config.get("label_key", "")
  if not label_key:
    return None
  if not isinstance(label_key, str):
    raise DataError(f"config.data.label_key={label_key!r}: expected a string")
  if data_config.get("kind", "image") == "audio":
    raise DataError(f"config.data.label_key={label_key!r}: class labels of audio (data.kind="
                    "'audio') are not supported yet; set data.label_key=''")
  source = data_config.source
  if source == "digits":
    _only_label(label_key, source, "sklearn's target (the digit)")
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    return _as_labels(datasets.load_digits().target, "sklearn digits' target")
  if source in TFDS_SOURCES:
    return _load_tfds_labels(data_config, label_key)
  if source not in ("folder", "npz"):
    raise DataError(f"config.data.label_key={label_key!r}: data.source={source!r} has no class "
                    "labels (TFDS sets, digits, folder and npz have; for idx files save images "
                    "and labels with np.savez and use data.source='npz')")
  path = data_config.get("path", "")
  if not os.path.exists(path):
    raise DataError(f"config.data.path={path!r}: does not exist (data.source={source!r})")
  try:
    if source == "folder":
      _only_label(label_key, source, "the sub-folder holding each image")
      return _folder_labels(path, data_config.split)
    return _read_npz_labels(path, label_key, data_config.get("npz_key", ""))
  except _READ_ERRORS as e:
    raise DataError(f"{path}: unreadable as data.source={source!r} ({_short(e)})") from e


class BatchStream:
  """Deterministic batches by index; each process gets its rows of every global batch.

  `images` is an array (in memory or a memory-mapped cache) or a TfdsImages; the rows of a step
  are the same either way. From a TfdsImages, only this process's rows are read and decoded, and
  the batch of step s + 1 is read in a background thread while step s trains.

  `labels` (int [N], load_labels): each batch is then {"image": its rows, "label": int32 labels of
  the same rows}; without them a batch is the image array alone.
  """

  def __init__(self, images: Union[np.ndarray, TfdsImages], global_batch_size: int, seed: int,
               process_index: Optional[int] = None, process_count: Optional[int] = None, *,
               labels: Optional[np.ndarray] = None):
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
      raise ValueError(f"batch size {global_batch_size} not divisible by {process_count} processes")
    if len(images) == 0:
      raise DataError("the data set is empty")
    if labels is not None:
      labels = _as_labels(labels, "the labels", len(images))
    self.images = images
    self.labels = labels
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.process_index = process_index
    self.seed = seed
    self._permutations = {}
    self._prefetch = isinstance(images, TfdsImages)
    self._reader = None   # the one thread that reads a TfdsImages
    self._pending = None  # (step, future of its batch)
    self._last = None     # (step, its batch)

  def _permutation(self, epoch: int) -> np.ndarray:
    cached = self._permutations  # one epoch's; the prefetch thread may replace it meanwhile
    if epoch not in cached:
      cached = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.images))}
      self._permutations = cached
    return cached[epoch]

  def indices(self, step: int) -> np.ndarray:
    """Indices of this process's rows of the global batch of `step`."""
    start = step * self.global_batch_size + self.process_index * self.local_batch_size
    positions = np.arange(start, start + self.local_batch_size)
    epochs, offsets = np.divmod(positions, len(self.images))
    return np.array([self._permutation(e)[o] for e, o in zip(epochs, offsets)])

  def batch(self, step: int) -> Union[np.ndarray, dict]:
    """This process's rows of the global batch of `step` (uint8 [local batch, H, W, C]); with
    labels, {"image": those rows, "label": int32 [local batch], their labels}."""
    if not self._prefetch:
      return self._read(step)
    if self._last is not None and self._last[0] == step:  # asked again (compile, then step 1)
      return _copy(self._last[1])
    if self._reader is None:
      self._reader = concurrent.futures.ThreadPoolExecutor(1, "jdiff-prefetch")
    pending, self._pending = self._pending, None
    future = (pending[1] if pending is not None and pending[0] == step
              else self._reader.submit(self._read, step))
    self._pending = (step + 1, self._reader.submit(self._read, step + 1))
    self._last = (step, future.result())
    return _copy(self._last[1])

  def _read(self, step: int) -> Union[np.ndarray, dict]:
    indices = self.indices(step)
    order = np.argsort(indices)  # sorted reads are faster on a memory map
    batch = np.empty((len(indices),) + self.images.shape[1:], self.images.dtype)
    batch[order] = self.images[indices[order]]
    if self.labels is None:
      return batch
    return {"image": batch, "label": self.labels[indices]}

  def iterate(self, start_step: int) -> Iterator[Union[np.ndarray, dict]]:
    step = start_step
    while True:
      yield self.batch(step)
      step += 1


def _copy(batch: Union[np.ndarray, dict]) -> Union[np.ndarray, dict]:
  return ({name: array.copy() for name, array in batch.items()} if isinstance(batch, dict)
          else batch.copy())
