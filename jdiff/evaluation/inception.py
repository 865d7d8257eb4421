"""The FID Inception-v3 network (the 2015-12-05 TensorFlow graph used by TF-GAN, pytorch-fid and
the original FID/IS code) as a Flax Linen module in NHWC, with the two preprocessing conventions
FIDs are reported in (PREPROCESSINGS): pytorch-fid's and the TF1-era code's (TTUR, TF-GAN).

Module and parameter names follow pytorch-fid's so its weight file maps over by name
(jdiff.evaluation.torch_weights). Differences from torchvision's Inception-v3, as in that graph:
the average pools in Mixed_5b..Mixed_7b ignore padding, and Mixed_7c's pool branch max-pools.
"""

import functools
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdiff.evaluation import metrics, torch_weights

INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_LOGITS = 1008  # 1000 ImageNet classes + 8 unused outputs of the original graph
PREPROCESSINGS = ("tf1", "pytorch_fid")  # = jdiff.choices.FID_PREPROCESSINGS
NO_LOGITS = "this weight file has no logits: FID and KID only"
# Features are compared against statistics computed elsewhere, so they must not depend on the
# backend's default matmul precision (bf16 passes on TPU, TF32 on GPU).
PRECISION = jax.lax.Precision.HIGHEST


class BasicConv(nn.Module):
  """Conv without bias -> BatchNorm with running statistics (eps 0.001) -> ReLU."""
  features: int
  kernel_size: Tuple[int, int]
  strides: Tuple[int, int] = (1, 1)
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel_size, self.strides, padding=[(p, p) for p in self.padding],
                use_bias=False, precision=PRECISION, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x):
  # TensorFlow's SAME average pool divides by the number of real (unpadded) inputs.
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride2(x):
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    branch1x1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    branch5x5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    branch5x5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
    branch3x3dbl = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)
    branch_pool = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35x35 -> 17x17."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = BasicConv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    branch3x3dbl = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    branch1x1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    branch7x7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    branch7x7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
    branch7x7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
    branch7x7dbl = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    branch7x7dbl = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(branch7x7dbl)
    branch7x7dbl = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(branch7x7dbl)
    branch7x7dbl = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(branch7x7dbl)
    branch7x7dbl = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(branch7x7dbl)
    branch_pool = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17x17 -> 8x8."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    branch3x3 = BasicConv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(branch3x3)
    branch7x7x3 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    branch7x7x3 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = BasicConv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
  max_pool_branch: bool  # True for the last block (Mixed_7c) of the FID graph

  @nn.compact
  def __call__(self, x):
    branch1x1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    branch3x3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    branch3x3 = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3)], axis=-1)
    branch3x3dbl = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(branch3x3dbl),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(branch3x3dbl)], axis=-1)
    if self.max_pool_branch:
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3_same(x)
    branch_pool = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionV3(nn.Module):
  """Network input [N, 299, 299, 3] (from fid_inception_input) -> (pool3 [N, 2048], logits [N, 1008])."""

  @nn.compact
  def __call__(self, x):
    x = BasicConv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool_branch=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool_branch=True, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_LOGITS, precision=PRECISION, name="fc")(pool3)
    return pool3, logits


# ----------------------------------------------------------------------------------------------
# Preprocessing


@functools.lru_cache(maxsize=None)
def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 weights of torch's F.interpolate(mode='bilinear',
  align_corners=False) along one axis (no antialiasing, unlike jax.image.resize).

  Output pixel i samples the input at src = (i + 0.5) * in/out - 0.5, clamped below at 0, from
  floor(src) and the next pixel (clamped at the edge); computed in float32 like torch.
  """
  scale = np.float32(in_size / out_size)
  src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5),
                   np.float32(0))
  lower = src.astype(np.int64)  # floor, as src >= 0
  upper = np.minimum(lower + 1, in_size - 1)
  upper_weight = src - lower.astype(np.float32)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lower), np.float32(1) - upper_weight)
  np.add.at(matrix, (rows, upper), upper_weight)
  matrix.setflags(write=False)  # shared by every caller through the cache
  return matrix


@functools.lru_cache(maxsize=None)
def tf1_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 weights of TF1's tf.image.resize_bilinear(align_corners=False)
  along one axis: no half-pixel centres.

  TF1 kernels/image_resizer_state.h + resize_bilinear_op.cc (compute_interpolation_weights):
  scale = in/out; in = out_index * scale; lower = floor(in); upper = min(ceil(in), in_size - 1);
  lerp = in - lower; computed in float32. (ceil(in) = lower + 1 wherever lerp != 0.)
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(src).astype(np.int64)
  upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
  upper_weight = src - lower.astype(np.float32)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lower), np.float32(1) - upper_weight)
  np.add.at(matrix, (rows, upper), upper_weight)
  matrix.setflags(write=False)
  return matrix


_RESIZE_MATRICES = {"pytorch_fid": bilinear_resize_matrix, "tf1": tf1_resize_matrix}


def resize_bilinear(images: jax.Array, height: int, width: int,
                    preprocessing: str = "pytorch_fid") -> jax.Array:
  """NHWC bilinear resize: torch's align_corners=False ("pytorch_fid") or TF1's ("tf1")."""
  matrix = _RESIZE_MATRICES[preprocessing]
  rows = jnp.asarray(matrix(images.shape[1], height))
  cols = jnp.asarray(matrix(images.shape[2], width))
  return jnp.einsum("oh,nhwc,pw->nopc", rows, images, cols, precision=PRECISION)


def fid_inception_input(images: jax.Array, preprocessing: str = "pytorch_fid") -> jax.Array:
  """Library images [N, H, W, C] in [-1, 1], C in {1, 3} -> the network's [N, 299, 299, 3] input.

  "pytorch_fid": pytorch-fid's steps (pytorch_fid/inception.py, FIDInceptionA.forward's caller
  InceptionV3.forward): [0, 1] images, F.interpolate(bilinear, align_corners=False) to 299x299,
  then 2x - 1.
  "tf1": the 2015-12-05 graph's own input path as TTUR (fid.py) feeds it: [0, 255] images,
  ResizeBilinear (TF1, no half-pixel centres) to 299x299, then Sub 128 and Mul 1/128.
  Grayscale is repeated to three channels.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W, 1 or 3], got shape {images.shape}")
  if preprocessing not in PREPROCESSINGS:
    raise ValueError(f"fid preprocessing {preprocessing!r}: must be one of {list(PREPROCESSINGS)}")
  images = jnp.broadcast_to(images, images.shape[:3] + (3,)).astype(jnp.float32)
  if preprocessing == "tf1":
    pixels = (images + 1.0) * 127.5
    return (resize_bilinear(pixels, INPUT_SIZE, INPUT_SIZE, "tf1") - 128.0) / 128.0
  unit = (images + 1.0) / 2.0
  return 2.0 * resize_bilinear(unit, INPUT_SIZE, INPUT_SIZE) - 1.0


def inception_apply(variables, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(pool3 [N, 2048], logits [N, 1008]) of library images [N, H, W, C] in [-1, 1], pytorch-fid
  preprocessing."""
  return InceptionV3().apply(variables, fid_inception_input(images, "pytorch_fid"))


def inception_apply_tf1(variables, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """inception_apply with the TF1-era preprocessing."""
  return InceptionV3().apply(variables, fid_inception_input(images, "tf1"))


# Module-level functions, so repeated feature extractions reuse their compilations.
_APPLY = {"pytorch_fid": inception_apply, "tf1": inception_apply_tf1}


def has_logits(variables) -> bool:
  """False for a weight file whose fc layer is all zeros (or was absent): its logits, and so any
  Inception Score, carry no information."""
  return bool(np.any(np.asarray(variables["params"]["fc"]["kernel"]) != 0))


def _variable_shapes():
  # Parameter shapes do not depend on the spatial size; 75x75 is the smallest valid input.
  smallest_input = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.key(0), smallest_input)


def init_inception_variables(seed: int) -> dict:
  """Random variables of the right structure, for tests and file-format round trips.

  He-normal kernels and unit-scale batch statistics keep activations O(1) through all 94
  layers. Drawn with numpy: jitting Flax's initializers for 94 shapes takes many seconds.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)  # biases and means

  return jax.tree_util.tree_map_with_path(draw, _variable_shapes())


def load_fid_inception_variables(path: str = "") -> dict:
  """Flax variables of the pytorch-fid weight file at `path`, or of the cached download."""
  state_dict = dict(torch_weights.load_state_dict(torch_weights.fid_inception_weights_path(path)))
  if "fc.weight" not in state_dict and "fc.bias" not in state_dict:
    # A pool3-only file: zero logits, which has_logits() reports as no logits.
    state_dict["fc.weight"] = np.zeros((NUM_LOGITS, POOL3_DIM), np.float32)
    state_dict["fc.bias"] = np.zeros((NUM_LOGITS,), np.float32)
  variables = torch_weights.inception_variables_from_state_dict(state_dict)
  expected_shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), _variable_shapes())
  loaded_shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), variables)
  if loaded_shapes != expected_shapes:
    raise ValueError(f"{path or 'the weight file'} does not hold the pytorch-fid Inception-v3 weights")
  return jax.tree_util.tree_map(jnp.asarray, variables)


def fid_inception_features(variables, images, batch_size: int = 200, preprocessing: str = "pytorch_fid",
                           num_images: Optional[int] = None, what: str = "") -> Tuple[np.ndarray, np.ndarray]:
  """(pool3 [N, 2048], logits [N, 1008]) of library images in [-1, 1], batched and sharded over
  all devices, with `preprocessing` (PREPROCESSINGS). `images` is an array [N, H, W, C] or an
  iterable of such batches (num_images, when given, lets progress lines say `what` with an ETA)."""
  if preprocessing not in _APPLY:
    raise ValueError(f"fid preprocessing {preprocessing!r}: must be one of {list(PREPROCESSINGS)}")
  return metrics.extract_features(_APPLY[preprocessing], variables, images, batch_size,
                                  num_images=num_images, what=what)
