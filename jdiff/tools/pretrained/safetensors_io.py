"""The safetensors format in numpy (no torch, no safetensors package needed).

A file is: 8 bytes little-endian header length N, N bytes of JSON {name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the tensors' little-endian bytes,
offsets relative to the end of the header (huggingface/safetensors, docs "format").
"""

import json
import struct
from typing import Dict, Mapping, Optional

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


def load(path: str) -> Dict[str, np.ndarray]:
  """{name: array} in file order (float16 / bfloat16 stay as stored)."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 8:
    raise ValueError(f"{path}: not a safetensors file (too short)")
  (length,) = struct.unpack("<Q", data[:8])
  if 8 + length > len(data):
    raise ValueError(f"{path}: not a safetensors file (header length {length})")
  header = json.loads(data[8:8 + length].decode("utf-8"))
  body = memoryview(data)[8 + length:]
  arrays = {}
  for name, spec in header.items():
    if name == "__metadata__":
      continue
    if spec["dtype"] not in DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has dtype {spec['dtype']}, not supported")
    begin, end = spec["data_offsets"]
    array = np.frombuffer(body[begin:end], dtype=DTYPES[spec["dtype"]])
    arrays[name] = array.reshape(spec["shape"]).copy()
  return arrays


def save(path: str, arrays: Mapping[str, np.ndarray],
         metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes arrays (C order, little-endian) in sorted name order; metadata as __metadata__."""
  header, chunks, offset = {}, [], 0
  if metadata:
    header["__metadata__"] = dict(metadata)
  for name in sorted(arrays):
    array = np.ascontiguousarray(arrays[name])
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    array = array.astype(dtype, copy=False)
    if array.dtype not in NAMES:
      raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no safetensors name")
    raw = array.tobytes()
    header[name] = {"dtype": NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
  encoded += b" " * (-len(encoded) % 8)  # the reference pads the header to 8 bytes
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for chunk in chunks:
      f.write(chunk)
