"""PyTorch .pth state dicts without torch: reader (zip and legacy formats), zip writer, the
pytorch-fid Inception key mapping to and from Flax variables, and the weight download.

A state dict here is a dict of name -> numpy array, in file order.
"""

import collections
import hashlib
import io
import os
import pickle
import shutil
import struct
import tempfile
import urllib.request
import zipfile
from typing import Dict, Mapping

import ml_dtypes
import numpy as np
from flax import traverse_util

from jdiff.evaluation import cache_dir

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# Full sha256 of the release file (95,628,359 bytes) as recorded by several independent projects
# that pin it; its first 8 hex digits are the "6726825d" in the file name (torch.hub's convention).
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"

# torch.save's legacy format (torch < 1.6) opens with these two pickled integers.
LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL_VERSION = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
STORAGE_NAMES = {dtype: name for name, dtype in STORAGE_DTYPES.items()}

# BatchNorm's step counter: not a weight, and absent from files written by older torch.
IGNORED_SUFFIX = "num_batches_tracked"


# ----------------------------------------------------------------------------------------------
# Reading


class _StorageSpec:
  """A storage named by the pickle; its bytes come from elsewhere in the file."""

  def __init__(self, dtype: np.dtype, key: str, numel: int, view_offset: int = 0):
    self.dtype, self.key, self.numel, self.view_offset = dtype, key, numel, view_offset


class _TensorSpec:
  """What torch._utils._rebuild_tensor_v2 would build, kept until the storage bytes are known."""

  def __init__(self, storage, storage_offset, size, stride, *unused_args):
    self.storage, self.offset = storage, int(storage_offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

  def materialize(self, storage_bytes: Mapping[str, bytes]) -> np.ndarray:
    # Files are little-endian, as are the hosts jdiff runs on, so the bytes are used as they are.
    storage = self.storage
    flat = np.frombuffer(storage_bytes[storage.key], dtype=storage.dtype)
    flat = flat[storage.view_offset:storage.view_offset + storage.numel]
    if 0 in self.size:
      return np.zeros(self.size, storage.dtype)
    extent = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if extent > flat.size:
      raise ValueError(f"tensor of size {self.size} stride {self.stride} overruns storage {storage.key}")
    strides = tuple(s * storage.dtype.itemsize for s in self.stride)
    return np.lib.stride_tricks.as_strided(flat[self.offset:], self.size, strides).copy()


class _StateDictUnpickler(pickle.Unpickler):
  """Builds only what a state dict needs; any other global in the file is refused."""

  def __init__(self, file):
    super().__init__(file)
    # Root storages by key: the legacy format gives their bytes after the pickle, in key order.
    self.storages: Dict[str, _StorageSpec] = {}

  def find_class(self, module, name):
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _TensorSpec
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch" and name in STORAGE_DTYPES:
      return STORAGE_DTYPES[name]
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a tensor state dict")

  def persistent_load(self, saved_id):
    kind = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
    # zip: (kind, type, key, location, numel); legacy adds a view (view_key, offset, numel) or None.
    dtype, key, numel = saved_id[1], str(saved_id[2]), int(saved_id[4])
    self.storages.setdefault(key, _StorageSpec(dtype, key, numel))
    if len(saved_id) > 5 and saved_id[5] is not None:
      _, view_offset, view_numel = saved_id[5]
      return _StorageSpec(dtype, key, int(view_numel), int(view_offset))
    return self.storages[key]


def _build_state_dict(obj, storage_bytes: Mapping[str, bytes]) -> Dict[str, np.ndarray]:
  if not isinstance(obj, Mapping):
    raise ValueError(f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
  state_dict = {}
  for name, value in obj.items():
    if name.endswith(IGNORED_SUFFIX):
      continue
    if not isinstance(value, _TensorSpec):
      raise ValueError(f"entry {name!r} is a {type(value).__name__}, not a tensor")
    state_dict[name] = value.materialize(storage_bytes)
  return state_dict


def _read_zip(path: str) -> Dict[str, np.ndarray]:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickle_names = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickle_names) != 1:
      raise ValueError(f"{path}: zip archive without exactly one <prefix>/data.pkl")
    prefix = pickle_names[0][:-len("data.pkl")]
    if prefix + "byteorder" in names and archive.read(prefix + "byteorder") != b"little":
      raise ValueError(f"{path}: big-endian tensor data is not supported")
    obj = _StateDictUnpickler(io.BytesIO(archive.read(pickle_names[0]))).load()
    storage_prefix = prefix + "data/"
    storage_bytes = {name[len(storage_prefix):]: archive.read(name)
                     for name in names if name.startswith(storage_prefix)}
  return _build_state_dict(obj, storage_bytes)


def _read_legacy(path: str) -> Dict[str, np.ndarray]:
  with open(path, "rb") as f:
    # Every pickle in the file, headers included, goes through the restricted unpickler.
    load = lambda: _StateDictUnpickler(f).load()
    try:
      magic = load()
    except Exception as e:
      raise ValueError(f"{path}: neither a zip archive nor a legacy torch file") from e
    if magic != LEGACY_MAGIC_NUMBER:
      raise ValueError(f"{path}: neither a zip archive nor a legacy torch file (bad magic number)")
    if load() != LEGACY_PROTOCOL_VERSION:
      raise ValueError(f"{path}: unsupported legacy protocol version")
    sys_info = load()
    if not sys_info.get("little_endian", True):
      raise ValueError(f"{path}: big-endian tensor data is not supported")
    unpickler = _StateDictUnpickler(f)
    obj = unpickler.load()
    storage_keys = load()
    storage_bytes = {}
    for key in storage_keys:
      spec = unpickler.storages[str(key)]
      (numel,) = struct.unpack("<q", f.read(8))
      if numel != spec.numel:
        raise ValueError(f"{path}: storage {key} holds {numel} elements, the pickle says {spec.numel}")
      data = f.read(numel * spec.dtype.itemsize)
      if len(data) != numel * spec.dtype.itemsize:
        raise ValueError(f"{path}: truncated storage {key}")
      storage_bytes[str(key)] = data
  return _build_state_dict(obj, storage_bytes)


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a torch.save'd state dict (zip or legacy format) into numpy arrays, without torch.

  `num_batches_tracked` entries are dropped. Only tensors, OrderedDicts and storages are
  unpickled: a file holding anything else (code, modules) is refused.
  """
  if zipfile.is_zipfile(path):
    return _read_zip(path)
  return _read_legacy(path)


# ----------------------------------------------------------------------------------------------
# Writing (zip format, as torch >= 1.6 writes by default). Pickle opcodes are written directly
# because pickling torch globals by reference would otherwise need torch importable.


def _pickle_int(value: int) -> bytes:
  if -2**31 <= value < 2**31:
    return b"J" + struct.pack("<i", value)  # BININT
  encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
  return b"\x8a" + bytes([len(encoded)]) + encoded  # LONG1


def _pickle_str(value: str) -> bytes:
  encoded = value.encode("utf-8")
  return b"X" + struct.pack("<I", len(encoded)) + encoded  # BINUNICODE


def _pickle_int_tuple(values) -> bytes:
  return b"(" + b"".join(_pickle_int(int(v)) for v in values) + b"t"  # MARK ... TUPLE


def _pickle_global(module: str, name: str) -> bytes:
  return b"c" + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n"


def _pickle_state_dict(arrays) -> bytes:
  """The data.pkl torch writes for an OrderedDict of contiguous tensors, one storage each.

  Storage i is keyed "i"; its persistent id is ("storage", <dtype>Storage, "i", "cpu", numel).
  """
  empty_ordered_dict = _pickle_global("collections", "OrderedDict") + b")R"  # EMPTY_TUPLE REDUCE
  out = [b"\x80\x02", empty_ordered_dict, b"("]  # PROTO 2, the dict, MARK for SETITEMS
  for i, (name, array) in enumerate(arrays):
    strides = [int(np.prod(array.shape[d + 1:])) for d in range(array.ndim)]
    persistent_id = (b"(" + _pickle_str("storage") + _pickle_global("torch", STORAGE_NAMES[array.dtype])
                     + _pickle_str(str(i)) + _pickle_str("cpu") + _pickle_int(array.size)
                     + b"tQ")  # TUPLE BINPERSID
    out += [_pickle_str(name), _pickle_global("torch._utils", "_rebuild_tensor_v2"), b"(",
            persistent_id, _pickle_int(0), _pickle_int_tuple(array.shape), _pickle_int_tuple(strides),
            b"\x89", empty_ordered_dict, b"tR"]  # NEWFALSE (requires_grad), hooks; TUPLE REDUCE
  out.append(b"u.")  # SETITEMS STOP
  return b"".join(out)


def save_state_dict(path: str, state_dict: Mapping[str, np.ndarray], archive_name: str = "archive") -> None:
  """Writes a state dict in torch's zip format, loadable by torch.load and load_state_dict."""
  arrays = [(name, np.ascontiguousarray(value)) for name, value in state_dict.items()]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr(f"{archive_name}/data.pkl", _pickle_state_dict(arrays))
    archive.writestr(f"{archive_name}/byteorder", "little")
    for i, (_, array) in enumerate(arrays):
      archive.writestr(f"{archive_name}/data/{i}", array.tobytes())
    archive.writestr(f"{archive_name}/version", "3\n")


# ----------------------------------------------------------------------------------------------
# pytorch-fid state dict <-> Flax variables of jdiff.evaluation.inception.InceptionV3. Module
# names are shared, so the mapping is by the last one or two name parts.

_TORCH_TO_FLAX_LEAF = {
    ("conv", "weight"): ("params", "conv", "kernel"),
    ("bn", "weight"): ("params", "bn", "scale"),
    ("bn", "bias"): ("params", "bn", "bias"),
    ("bn", "running_mean"): ("batch_stats", "bn", "mean"),
    ("bn", "running_var"): ("batch_stats", "bn", "var"),
    ("fc", "weight"): ("params", "fc", "kernel"),
    ("fc", "bias"): ("params", "fc", "bias"),
}
_FLAX_TO_TORCH_LEAF = {v: k for k, v in _TORCH_TO_FLAX_LEAF.items()}


def _torch_to_flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # conv OIHW -> HWIO
  if value.ndim == 2:
    return value.T  # linear [out, in] -> [in, out]
  return value


def _flax_to_torch_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 2:
    return value.T
  return value


def inception_variables_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """pytorch-fid state dict -> {'params': ..., 'batch_stats': ...} for InceptionV3 (NHWC)."""
  flat = {}
  for name, value in state_dict.items():
    if name.endswith(IGNORED_SUFFIX):
      continue
    parts = tuple(name.split("."))
    leaf = _TORCH_TO_FLAX_LEAF.get(parts[-2:])
    if leaf is None:
      raise ValueError(f"unexpected entry {name!r} in the Inception state dict")
    collection, layer, param = leaf
    flax_value = np.ascontiguousarray(_torch_to_flax_layout(np.asarray(value)))
    flat[(collection,) + parts[:-2] + (layer, param)] = flax_value
  return traverse_util.unflatten_dict(flat)


def state_dict_from_inception_variables(variables: Mapping) -> Dict[str, np.ndarray]:
  """The inverse of inception_variables_from_state_dict (without num_batches_tracked)."""
  state_dict = {}
  for path, value in traverse_util.flatten_dict(variables).items():
    collection, *modules, layer, param = path
    torch_layer, torch_param = _FLAX_TO_TORCH_LEAF[(collection, layer, param)]
    state_dict[".".join(modules + [torch_layer, torch_param])] = np.ascontiguousarray(
        _flax_to_torch_layout(np.asarray(value)))
  return state_dict


# ----------------------------------------------------------------------------------------------
# Download


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def fid_inception_weights_path(path: str = "", directory: str = "") -> str:
  """Path of the pytorch-fid Inception weights: `path` if given, else the cached download.

  The file is downloaded once into `directory` (default: jdiff.evaluation.cache_dir()), and its
  sha256 checked. Without network access, put the file there yourself.
  """
  if path:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"Inception weights file {path} does not exist")
    return path
  directory = directory or cache_dir()
  cached = os.path.join(directory, FID_WEIGHTS_FILENAME)
  if os.path.isfile(cached):
    if file_sha256(cached) != FID_WEIGHTS_SHA256:
      raise RuntimeError(f"{cached} has the wrong sha256 (expected {FID_WEIGHTS_SHA256}); "
                         "delete it and retry")
    return cached
  os.makedirs(directory, exist_ok=True)
  fd, partial = tempfile.mkstemp(dir=directory, suffix=".partial")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(FID_WEIGHTS_URL, timeout=60) as response:
      shutil.copyfileobj(response, out)
    if file_sha256(partial) != FID_WEIGHTS_SHA256:
      raise OSError("the downloaded file has the wrong sha256")
  except OSError as e:
    os.remove(partial)
    raise RuntimeError(f"could not download the FID Inception weights ({e}); download {FID_WEIGHTS_URL} "
                       f"to {cached} or pass its path") from None
  os.replace(partial, cached)
  return cached
