"""Ho et al.'s original TensorFlow DDPM checkpoints (hojonathanho/diffusion) -> jdiff's U-Net.

The released checkpoints (cifar10, celebahq, lsun church / bedroom / cat: model.ckpt-<step>) hold
the variables of diffusion_tf/models/unet.py under `model/`, each with its EMA shadow
(<name>/ExponentialMovingAverage, tf.train.ExponentialMovingAverage), plus the optimizer's slots
and global_step. jdiff's U-Net is that network layer for layer, and TF's layouts are flax's
(conv W [3, 3, in, out], dense / nin W [in, out], GroupNorm gamma / beta):

  model/temb/dense{0,1}            temb_{0,1}
  model/conv_in, conv_out, norm_out  conv_in, conv_out, norm_out
  model/down_i/block_j             down_i_res_j  (norm1, conv1, temb_proj, norm2, conv2,
                                                  nin_shortcut)
  model/down_i/attn_j              down_i_attn_j (norm, q, k, v, proj_out)
  model/down_i/downsample/conv     down_i_downsample
  model/mid/block_1, attn_1, block_2  mid_res_0, mid_attn, mid_res_1
  model/up_i/block_j, attn_j, upsample/conv   up_i_res_j, up_i_attn_j, up_i_upsample

The architecture is read off the variables' shapes (ch, ch_mult, residual blocks, attention
levels); what the checkpoint does not record comes from the reference scripts: the image size
(attention sits at 16x16 in all of Ho et al.'s models, so 16 * 2^level unless --image_size),
GroupNorm's 32 groups (contrib's default), T = 1000 linear betas 1e-4 .. 0.02, fixedlarge for
CIFAR-10 (run_cifar.py) and fixedsmall for the 256x256 models (diffusion_utils.py), dropout 0.1 /
0.0. Sampling uses the EMA weights (as the paper's samples) unless weights='raw'; the raw ones
become the train state's params either way.
"""

import re
from typing import Dict, Optional

import numpy as np

from jdiff.errors import CheckpointMismatchError, ConfigError
from jdiff.tools.pretrained import common

EMA_SUFFIX = "/ExponentialMovingAverage"
# Not weights of the model: the optimizer's slots and counters.
IGNORED = re.compile(r"(^global_step$|^beta[12]_power(_\d+)?$|/Adam(_1)?$|/Momentum$)")

_RESNET = (("norm1/gamma", "GroupNorm_0/scale"), ("norm1/beta", "GroupNorm_0/bias"),
           ("conv1/W", "Conv3x3_0/Conv_0/kernel"), ("conv1/b", "Conv3x3_0/Conv_0/bias"),
           ("temb_proj/W", "Dense_0/Dense_0/kernel"), ("temb_proj/b", "Dense_0/Dense_0/bias"),
           ("norm2/gamma", "GroupNorm_1/scale"), ("norm2/beta", "GroupNorm_1/bias"),
           ("conv2/W", "Conv3x3_1/Conv_0/kernel"), ("conv2/b", "Conv3x3_1/Conv_0/bias"))
_SHORTCUT = (("nin_shortcut/W", "shortcut/Dense_0/kernel"), ("nin_shortcut/b", "shortcut/Dense_0/bias"))
_ATTN = (("norm/gamma", "GroupNorm_0/scale"), ("norm/beta", "GroupNorm_0/bias"),
         ("q/W", "q/Dense_0/kernel"), ("q/b", "q/Dense_0/bias"),
         ("k/W", "k/Dense_0/kernel"), ("k/b", "k/Dense_0/bias"),
         ("v/W", "v/Dense_0/kernel"), ("v/b", "v/Dense_0/bias"),
         ("proj_out/W", "proj_out/Dense_0/kernel"), ("proj_out/b", "proj_out/Dense_0/bias"))
_CONV = (("conv/W", "Conv3x3_0/Conv_0/kernel"), ("conv/b", "Conv3x3_0/Conv_0/bias"))


def read_checkpoint(path: str):
  """({name: array}, global step or None) of a TF checkpoint prefix or folder."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError("--from=ddpm_tf needs tensorflow (pip install tensorflow-cpu)") from None
  try:
    reader = tf.train.load_checkpoint(path)
  except Exception as e:  # pylint: disable=broad-except  (NotFound, DataLoss, ...)
    raise ConfigError(f"--source={path}: not a TensorFlow checkpoint "
                      f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
  names = reader.get_variable_to_shape_map()
  arrays = {name: np.asarray(reader.get_tensor(name)) for name in names}
  step = int(arrays["global_step"]) if "global_step" in arrays else None
  return arrays, step


def _block_names(names, prefix):
  return sorted({int(m.group(1)) for name in names
                 for m in [re.match(re.escape(prefix) + r"(\d+)/", name)] if m})


def jdiff_config(arrays: Dict[str, np.ndarray], num_groups: int = 32,
                 image_size: Optional[int] = None):
  """The jdiff config of the model whose variables (without the EMA suffix) are `arrays`."""
  if "model/conv_in/W" not in arrays:
    raise CheckpointMismatchError("the checkpoint has no model/conv_in/W: not a checkpoint of "
                                  "hojonathanho/diffusion's unet.model(name='model')")
  names = list(arrays)
  in_ch, ch = arrays["model/conv_in/W"].shape[2:]
  levels = _block_names(names, "model/down_")
  if levels != list(range(len(levels))) or not levels:
    raise CheckpointMismatchError(f"levels model/down_* {levels}: expected 0..N-1")
  ch_mult = tuple(int(arrays[f"model/down_{i}/block_0/conv1/W"].shape[-1]) // ch for i in levels)
  num_res_blocks = len(_block_names(names, "model/down_0/block_"))
  attn_levels = [i for i in levels if f"model/down_{i}/attn_0/q/W" in arrays]
  if image_size is None:
    if not attn_levels:
      raise ConfigError("the model has no attention layers, so its image size is unknown: give "
                        "--image_size")
    image_size = 16 * 2 ** attn_levels[0]
  out_ch = arrays["model/conv_out/W"].shape[-1]
  if out_ch != in_ch:
    common.refuse("conv_out channels", int(out_ch), f"the input's {in_ch} (an eps model)",
                  "checkpoint")
  config = common.new_config()
  config.data.image_size = int(image_size)
  config.data.num_channels = int(in_ch)
  cifar = image_size == 32
  config.model.update(dict(ch=int(ch), ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                           attn_resolutions=tuple(image_size // 2 ** i for i in attn_levels),
                           dropout=0.1 if cifar else 0.0, num_groups=int(num_groups)))
  config.diffusion.update(dict(num_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                               beta_end=0.02, variance_type="fixedlarge" if cifar else "fixedsmall"))
  if not cifar:
    config.training.update(dict(batch_size=64, learning_rate=2e-5))
  common.guess_data(config)
  return config


def _name_map(config) -> Dict[str, str]:
  """{TF variable name: jdiff param path} of the config's U-Net."""
  model = config.model
  levels = len(model.ch_mult)
  size = config.data.image_size
  names = {"model/temb/dense0/W": "temb_0/Dense_0/kernel", "model/temb/dense0/b": "temb_0/Dense_0/bias",
           "model/temb/dense1/W": "temb_1/Dense_0/kernel", "model/temb/dense1/b": "temb_1/Dense_0/bias",
           "model/conv_in/W": "conv_in/Conv_0/kernel", "model/conv_in/b": "conv_in/Conv_0/bias",
           "model/norm_out/gamma": "norm_out/scale", "model/norm_out/beta": "norm_out/bias",
           "model/conv_out/W": "conv_out/Conv_0/kernel", "model/conv_out/b": "conv_out/Conv_0/bias"}

  def add(tf_prefix, jdiff_prefix, table):
    for tf_name, jdiff_name in table:
      names[f"{tf_prefix}/{tf_name}"] = f"{jdiff_prefix}/{jdiff_name}"

  channels = [model.ch * m for m in model.ch_mult]
  skips, in_ch = [model.ch], model.ch
  for level in range(levels):
    for j in range(model.num_res_blocks):
      add(f"model/down_{level}/block_{j}", f"down_{level}_res_{j}",
          _RESNET + (_SHORTCUT if in_ch != channels[level] else ()))
      in_ch = channels[level]
      skips.append(in_ch)
      if size // 2 ** level in model.attn_resolutions:
        add(f"model/down_{level}/attn_{j}", f"down_{level}_attn_{j}", _ATTN)
    if level != levels - 1:
      add(f"model/down_{level}/downsample", f"down_{level}_downsample", _CONV)
      skips.append(in_ch)
  add("model/mid/block_1", "mid_res_0", _RESNET)
  add("model/mid/attn_1", "mid_attn", _ATTN)
  add("model/mid/block_2", "mid_res_1", _RESNET)
  for level in reversed(range(levels)):
    for j in range(model.num_res_blocks + 1):
      block_in = in_ch + skips.pop()
      add(f"model/up_{level}/block_{j}", f"up_{level}_res_{j}",
          _RESNET + (_SHORTCUT if block_in != channels[level] else ()))
      in_ch = channels[level]
      if size // 2 ** level in model.attn_resolutions:
        add(f"model/up_{level}/attn_{j}", f"up_{level}_attn_{j}", _ATTN)
    if level != 0:
      add(f"model/up_{level}/upsample", f"up_{level}_upsample", _CONV)
  return names


def load(path: str, weights: str = "ema", num_groups: int = 32, image_size: Optional[int] = None):
  """(config, params sampling uses, train params or None, step, description) of a checkpoint."""
  arrays, step = read_checkpoint(path)
  where = f"TF checkpoint {path}"
  raw = {name: value for name, value in arrays.items() if not name.endswith(EMA_SUFFIX)}
  shadows = {name[:-len(EMA_SUFFIX)]: value for name, value in arrays.items()
             if name.endswith(EMA_SUFFIX)}
  config = jdiff_config(raw, num_groups, image_size)
  names = _name_map(config)

  def convert(source_arrays, what):
    source = common.Source(source_arrays, f"{where} ({what})", ignored=lambda n: bool(IGNORED.search(n)))
    params = {tuple(jdiff.split("/")): source.take(tf_name) for tf_name, jdiff in names.items()}
    return common.finish(config, params, source)

  raw_params = convert(raw, "weights")
  if weights == "raw":
    return config, raw_params, None, step or 0, where + " (raw weights)"
  if not shadows:
    raise CheckpointMismatchError(f"{where}: no EMA weights (<name>{EMA_SUFFIX}); import the raw "
                                  "ones with --weights=raw")
  ema_params = convert(shadows, "EMA weights")
  return config, ema_params, raw_params, step or 0, where + " (EMA weights)"

