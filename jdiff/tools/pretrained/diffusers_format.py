"""diffusers UNet2DModel <-> jdiff's U-Net (the DDPM layout of google/ddpm-*).

A diffusers DDPM folder holds config.json (UNet2DModel's arguments), the weights
(diffusion_pytorch_model.safetensors, or .bin: a torch state dict, read without torch) and the
DDPMScheduler's scheduler_config.json (betas). Module by module (diffusers/models/unets/unet_2d.py):

  conv_in, time_embedding.linear_{1,2}          conv_in, temb_{0,1}
  down_blocks.i.resnets.j                        down_i_res_j   (norm1, conv1, time_emb_proj,
                                                 norm2, conv2, conv_shortcut: GroupNorm_0,
                                                 Conv3x3_0, Dense_0, GroupNorm_1, Conv3x3_1,
                                                 shortcut)
  down_blocks.i.attentions.j                     down_i_attn_j  (group_norm, to_q|query,
                                                 to_k|key, to_v|value, to_out.0|proj_attn)
  down_blocks.i.downsamplers.0.conv              down_i_downsample
  mid_block.resnets.{0,1}, mid_block.attentions.0  mid_res_{0,1}, mid_attn
  up_blocks.u.resnets.j / attentions.j / upsamplers.0.conv   up_{N-1-u}_res_j / _attn_j / _upsample
  conv_norm_out, conv_out                        norm_out, conv_out

Layouts: conv OIHW <-> HWIO, linear [out, in] <-> [in, out], the 1x1 conv shortcut [out, in, 1, 1]
<-> a dense [in, out]. The 2022 hub checkpoints name the attention weights query / key / value /
proj_attn (diffusers renames them when it loads them); both namings are read, the current one is
written.

The config must be one jdiff's U-Net computes exactly: positional step embedding with
flip_sin_to_cos=false and freq_shift=1 (Ho et al.'s sin/cos with exponent i / (half - 1)),
single-head attention (attention_head_dim null or the channel count), downsample_padding 0 (TF's
SAME for a stride-2 conv), GroupNorm eps 1e-6, silu, no class embedding, and so on: anything
else is refused, naming the field.
"""

import json
import os
from typing import Dict, Mapping, Tuple

import numpy as np

from jdiff import config_lib
from jdiff.errors import CheckpointMismatchError, ConfigError
from jdiff.evaluation import torch_weights
from jdiff.tools.pretrained import common
from jdiff.tools.pretrained import safetensors_io

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
DOWN, ATTN_DOWN, UP, ATTN_UP = "DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"
ATTENTION_NAMES = (("to_q", "query", "q"), ("to_k", "key", "k"), ("to_v", "value", "v"),
                   ("to_out.0", "proj_attn", "proj_out"))
SCHEDULER_VARIANCES = {"fixed_small": "fixedsmall", "fixed_large": "fixedlarge"}
DIFFUSERS_VERSION = "0.30.0"  # the config.json format written (what from_pretrained checks)


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except OSError as e:
    raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path}: not JSON ({e})") from None


def model_folder(folder: str) -> str:
  """The folder with config.json: the folder itself, or its unet/ (a whole pipeline)."""
  for candidate in (folder, os.path.join(folder, "unet")):
    if os.path.isfile(os.path.join(candidate, "config.json")):
      return candidate
  raise ConfigError(f"{folder}: no config.json (nor unet/config.json): not a diffusers "
                    "UNet2DModel folder")


def scheduler_path(folder: str, unet_folder: str) -> str:
  for candidate in (os.path.join(unet_folder, "scheduler_config.json"),
                    os.path.join(folder, "scheduler_config.json"),
                    os.path.join(folder, "scheduler", "scheduler_config.json")):
    if os.path.isfile(candidate):
      return candidate
  raise ConfigError(f"{folder}: no scheduler_config.json (nor scheduler/scheduler_config.json): "
                    "the betas of the model are unknown")


def read_weights(unet_folder: str) -> Tuple[Dict[str, np.ndarray], str]:
  for name in WEIGHT_FILES:
    path = os.path.join(unet_folder, name)
    if os.path.isfile(path):
      arrays = (safetensors_io.load(path) if name.endswith(".safetensors")
                else torch_weights.load_state_dict(path))
      return {k: np.asarray(v, np.float32) for k, v in arrays.items()}, path
  raise ConfigError(f"{unet_folder}: none of {', '.join(WEIGHT_FILES)} (sharded or variant "
                    "weight files are not supported)")


# ------------------------------------------------------------------------------------------------
# Config


def _expect(unet: Mapping, field: str, allowed, default, what="config.json"):
  value = unet.get(field, default)
  values = allowed if isinstance(allowed, tuple) else (allowed,)
  if value not in values:
    common.refuse(field, value, " or ".join(repr(v) for v in values), what)
  return value


def jdiff_config(unet: Mapping, scheduler: Mapping):
  """The jdiff config of a UNet2DModel config.json and a DDPMScheduler scheduler_config.json."""
  if unet.get("_class_name", "UNet2DModel") != "UNet2DModel":
    common.refuse("_class_name", unet.get("_class_name"), "'UNet2DModel'", "config.json")
  _expect(unet, "center_input_sample", False, False)
  _expect(unet, "time_embedding_type", "positional", "positional")
  _expect(unet, "flip_sin_to_cos", False, True)
  _expect(unet, "freq_shift", 1, 0)
  _expect(unet, "act_fn", ("silu", "swish"), "silu")
  _expect(unet, "norm_eps", 1e-6, 1e-5)
  _expect(unet, "downsample_padding", 0, 1)
  _expect(unet, "downsample_type", "conv", "conv")
  _expect(unet, "upsample_type", "conv", "conv")
  _expect(unet, "mid_block_type", "UNetMidBlock2D", "UNetMidBlock2D")
  _expect(unet, "mid_block_scale_factor", 1, 1)
  _expect(unet, "resnet_time_scale_shift", "default", "default")
  _expect(unet, "add_attention", True, True)
  _expect(unet, "class_embed_type", None, None)
  _expect(unet, "num_class_embeds", None, None)
  _expect(unet, "attn_norm_num_groups", None, None)
  channels = list(unet.get("block_out_channels", (224, 448, 672, 896)))
  ch = channels[0]
  if any(c % ch for c in channels):
    common.refuse("block_out_channels", channels, "multiples of the first entry", "config.json")
  _expect(unet, "time_embedding_dim", (None, 4 * ch), None)
  in_channels = unet.get("in_channels", 3)
  if in_channels not in (1, 3):
    common.refuse("in_channels", in_channels, "1 or 3", "config.json")
  _expect(unet, "out_channels", in_channels, 3)
  down = list(unet.get("down_block_types", (DOWN, ATTN_DOWN, ATTN_DOWN, ATTN_DOWN)))
  up = list(unet.get("up_block_types", (ATTN_UP, ATTN_UP, ATTN_UP, UP)))
  if len(down) != len(channels) or any(t not in (DOWN, ATTN_DOWN) for t in down):
    common.refuse("down_block_types", down, f"{len(channels)} of {DOWN!r} / {ATTN_DOWN!r}",
                  "config.json")
  mirrored = [ATTN_UP if t == ATTN_DOWN else UP for t in reversed(down)]
  if up != mirrored:
    common.refuse("up_block_types", up, f"the mirror of down_block_types: {mirrored}",
                  "config.json")
  size = unet.get("sample_size")
  if isinstance(size, (list, tuple)):
    if len(set(size)) != 1:
      common.refuse("sample_size", size, "square images", "config.json")
    size = size[0]
  if not isinstance(size, int):
    common.refuse("sample_size", size, "an integer", "config.json")
  attn_levels = [i for i, t in enumerate(down) if t == ATTN_DOWN]
  head_dim = unet.get("attention_head_dim", 8)
  for level in attn_levels + [len(channels) - 1]:  # the middle block has attention too
    if head_dim is not None and head_dim != channels[level]:
      common.refuse("attention_head_dim", head_dim,
                    f"null (one head; {channels[level]} channels at level {level})", "config.json")

  if scheduler.get("_class_name", "DDPMScheduler") not in ("DDPMScheduler", "DDIMScheduler"):
    common.refuse("_class_name", scheduler.get("_class_name"), "'DDPMScheduler'",
                  "scheduler_config.json")
  _expect(scheduler, "beta_schedule", "linear", "linear", "scheduler_config.json")
  _expect(scheduler, "trained_betas", None, None, "scheduler_config.json")
  _expect(scheduler, "prediction_type", "epsilon", "epsilon", "scheduler_config.json")
  variance = _expect(scheduler, "variance_type", tuple(SCHEDULER_VARIANCES), "fixed_small",
                     "scheduler_config.json")

  config = common.new_config()
  config.data.image_size = size
  config.data.num_channels = in_channels
  config.model.update(dict(
      ch=ch, ch_mult=tuple(c // ch for c in channels), num_res_blocks=unet.get("layers_per_block", 2),
      attn_resolutions=tuple(size // 2 ** level for level in attn_levels),
      dropout=float(unet.get("dropout", 0.0)), num_groups=unet.get("norm_num_groups", 32)))
  config.diffusion.update(dict(
      num_timesteps=int(scheduler.get("num_train_timesteps", 1000)),
      beta_start=float(scheduler.get("beta_start", 1e-4)),
      beta_end=float(scheduler.get("beta_end", 0.02)),
      variance_type=SCHEDULER_VARIANCES[variance]))
  common.guess_data(config)
  return config


# ------------------------------------------------------------------------------------------------
# Weights


def _conv(w):  # OIHW -> HWIO
  return np.transpose(w, (2, 3, 1, 0))


def _linear(w):  # [out, in] -> [in, out]
  return np.transpose(w)


def _nin(w):  # 1x1 conv [out, in, 1, 1] -> dense [in, out]
  return np.transpose(w.reshape(w.shape[0], w.shape[1]))


def _name_map(config, layer_names) -> Dict[str, Tuple[Tuple[str, ...], str]]:
  """{diffusers weight name: (jdiff param path, layout)} for the config's U-Net; for each
  attention projection, both namings (layer_names picks which the file uses)."""
  model = config.model
  levels = len(model.ch_mult)
  size = config.data.image_size
  names = {}

  def add(prefix, path, kind, with_bias=True):
    weight = {"conv": "kernel", "linear": "kernel", "nin": "kernel", "norm": "scale"}[kind]
    names[f"{prefix}.weight"] = (path + (weight,), kind)
    if with_bias:
      names[f"{prefix}.bias"] = (path + ("bias",), "bias")

  def resnet(prefix, block, in_ch, out_ch):
    add(f"{prefix}.norm1", (block, "GroupNorm_0"), "norm")
    add(f"{prefix}.conv1", (block, "Conv3x3_0", "Conv_0"), "conv")
    add(f"{prefix}.time_emb_proj", (block, "Dense_0", "Dense_0"), "linear")
    add(f"{prefix}.norm2", (block, "GroupNorm_1"), "norm")
    add(f"{prefix}.conv2", (block, "Conv3x3_1", "Conv_0"), "conv")
    if in_ch != out_ch:
      add(f"{prefix}.conv_shortcut", (block, "shortcut", "Dense_0"), "nin")

  def attention(prefix, block):
    add(f"{prefix}.group_norm", (block, "GroupNorm_0"), "norm")
    for current, old, ours in ATTENTION_NAMES:
      add(f"{prefix}.{layer_names(prefix, current, old)}", (block, ours, "Dense_0"), "linear")

  add("conv_in", ("conv_in", "Conv_0"), "conv")
  add("time_embedding.linear_1", ("temb_0", "Dense_0"), "linear")
  add("time_embedding.linear_2", ("temb_1", "Dense_0"), "linear")
  channels = [model.ch * m for m in model.ch_mult]
  skip_channels = [model.ch]
  in_ch = model.ch
  for level in range(levels):
    has_attn = size // 2 ** level in model.attn_resolutions
    for j in range(model.num_res_blocks):
      resnet(f"down_blocks.{level}.resnets.{j}", f"down_{level}_res_{j}", in_ch, channels[level])
      in_ch = channels[level]
      skip_channels.append(in_ch)
      if has_attn:
        attention(f"down_blocks.{level}.attentions.{j}", f"down_{level}_attn_{j}")
    if level != levels - 1:
      add(f"down_blocks.{level}.downsamplers.0.conv", (f"down_{level}_downsample", "Conv3x3_0",
                                                       "Conv_0"), "conv")
      skip_channels.append(in_ch)
  resnet("mid_block.resnets.0", "mid_res_0", in_ch, in_ch)
  attention("mid_block.attentions.0", "mid_attn")
  resnet("mid_block.resnets.1", "mid_res_1", in_ch, in_ch)
  for u, level in enumerate(reversed(range(levels))):
    has_attn = size // 2 ** level in model.attn_resolutions
    for j in range(model.num_res_blocks + 1):
      block_in = in_ch + skip_channels.pop()
      resnet(f"up_blocks.{u}.resnets.{j}", f"up_{level}_res_{j}", block_in, channels[level])
      in_ch = channels[level]
      if has_attn:
        attention(f"up_blocks.{u}.attentions.{j}", f"up_{level}_attn_{j}")
    if level != 0:
      add(f"up_blocks.{u}.upsamplers.0.conv", (f"up_{level}_upsample", "Conv3x3_0", "Conv_0"),
          "conv")
  add("conv_norm_out", ("norm_out",), "norm")
  add("conv_out", ("conv_out", "Conv_0"), "conv")
  return names


TO_JDIFF = {"conv": _conv, "linear": _linear, "nin": _nin, "norm": lambda w: w,
            "bias": lambda w: w}
TO_TORCH = {"conv": lambda w: np.transpose(w, (3, 2, 0, 1)), "linear": np.transpose,
            "nin": lambda w: np.transpose(w).reshape(w.shape[1], w.shape[0], 1, 1),
            "norm": lambda w: w, "bias": lambda w: w}


def params_from_state_dict(config, arrays: Mapping[str, np.ndarray], where: str):
  """The jdiff params of a diffusers state dict; refuses unused or missing weights."""
  source = common.Source(arrays, where)

  def layer_names(prefix, current, old):
    return old if f"{prefix}.{old}.weight" in source else current

  params = {}
  for name, (path, kind) in _name_map(config, layer_names).items():
    params[path] = TO_JDIFF[kind](source.take(name))
  return common.finish(config, params, source)


def load(folder: str):
  """(jdiff config, params, description) of a local diffusers folder."""
  unet_folder = model_folder(folder)
  unet = _read_json(os.path.join(unet_folder, "config.json"))
  scheduler = _read_json(scheduler_path(folder, unet_folder))
  config = jdiff_config(unet, scheduler)
  arrays, path = read_weights(unet_folder)
  return config, params_from_state_dict(config, arrays, path), path


def snapshot_download(repo_id: str) -> str:
  """A hub model's local folder (huggingface_hub's cache); only the files the import reads."""
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError(f"--source={repo_id}: downloading from the hub needs huggingface_hub "
                      "(pip install huggingface_hub), or pass a local folder") from None
  try:
    return huggingface_hub.snapshot_download(
        repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin"])
  except Exception as e:  # pylint: disable=broad-except  (network, auth, missing repo)
    raise ConfigError(f"--source={repo_id}: cannot download it "
                      f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
                      ) from None


def resolve_source(source: str) -> str:
  """A local folder as it is; otherwise a hub id ("owner/name") downloaded."""
  if os.path.isdir(source):
    return source
  if os.path.exists(source) or source.count("/") != 1 or source.startswith((".", "/")):
    raise ConfigError(f"--source={source}: not a folder, nor a hub id like google/ddpm-cifar10-32")
  return snapshot_download(source)


# ------------------------------------------------------------------------------------------------
# Export


def diffusers_config(config) -> Tuple[dict, dict]:
  """(config.json, scheduler_config.json) of a jdiff config; refuses what diffusers' DDPM
  UNet2DModel cannot express."""
  model = config_lib.resolved_model_config(config)
  what = "jdiff config"
  if model.kind != "unet":
    common.refuse("model.kind", model.kind, "'unet'", what)
  if model.block_type != "res":
    common.refuse("model.block_type", model.block_type, "'res'", what)
  if model.skip_type == "interpolate":
    common.refuse("model.skip_type", model.skip_type, "'zero' or 'duplicate' (interpolate adds "
                  "weights a UNet2DModel has no place for)", what)
  if config.diffusion.variance_type == "learned_range":
    common.refuse("diffusion.variance_type", "learned_range", "'fixedlarge' or 'fixedsmall'", what)
  if config.diffusion.beta_schedule != "linear":
    common.refuse("diffusion.beta_schedule", config.diffusion.beta_schedule, "'linear'", what)
  size = config.data.image_size
  levels = len(model.ch_mult)
  level_sizes = [size // 2 ** level for level in range(levels)]
  attn_levels = [level for level, s in enumerate(level_sizes) if s in model.attn_resolutions]
  if any(r not in level_sizes for r in model.attn_resolutions):
    common.refuse("model.attn_resolutions", tuple(model.attn_resolutions),
                  f"sizes of the U-Net's levels {level_sizes}", what)
  down = [ATTN_DOWN if level in attn_levels else DOWN for level in range(levels)]
  unet = {
      "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
      "act_fn": "silu", "add_attention": True, "attention_head_dim": None,
      "attn_norm_num_groups": None,
      "block_out_channels": [model.ch * m for m in model.ch_mult],
      "center_input_sample": False, "class_embed_type": None, "down_block_types": down,
      "downsample_padding": 0, "downsample_type": "conv", "dropout": float(model.dropout),
      "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": config.data.num_channels,
      "layers_per_block": model.num_res_blocks, "mid_block_scale_factor": 1,
      "mid_block_type": "UNetMidBlock2D", "norm_eps": 1e-6, "norm_num_groups": model.num_groups,
      "num_class_embeds": None, "num_train_timesteps": None,
      "out_channels": config.data.num_channels, "resnet_time_scale_shift": "default",
      "sample_size": size, "time_embedding_dim": None, "time_embedding_type": "positional",
      "up_block_types": [ATTN_UP if t == ATTN_DOWN else UP for t in reversed(down)],
      "upsample_type": "conv",
  }
  variance = {v: k for k, v in SCHEDULER_VARIANCES.items()}[config.diffusion.variance_type]
  scheduler = {
      "_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
      "beta_start": config.diffusion.beta_start, "beta_end": config.diffusion.beta_end,
      "beta_schedule": "linear", "num_train_timesteps": config.diffusion.num_timesteps,
      "trained_betas": None, "variance_type": variance, "clip_sample": True,
      "prediction_type": "epsilon",
  }
  return unet, scheduler


def state_dict_from_params(config, params) -> Dict[str, np.ndarray]:
  """The diffusers state dict (current attention names) of jdiff params; refuses params that
  the layout leaves out."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = {path: np.asarray(value) for path, value in traverse_util.flatten_dict(params).items()}
  source = common.Source({"/".join(path): value for path, value in flat.items()}, "jdiff params")
  state = {}
  for name, (path, kind) in _name_map(config, lambda prefix, current, old: current).items():
    state[name] = np.ascontiguousarray(TO_TORCH[kind](source.take("/".join(path))))
  if source.unused():
    raise CheckpointMismatchError(
        f"jdiff params with no place in a UNet2DModel: {common.name_list(source.unused())}")
  return state


def export(config, params, out: str) -> None:
  """Writes out/config.json, diffusion_pytorch_model.safetensors, scheduler_config.json."""
  unet, scheduler = diffusers_config(config)
  state = state_dict_from_params(config, params)
  os.makedirs(out, exist_ok=True)
  safetensors_io.save(os.path.join(out, WEIGHT_FILES[0]), state, {"format": "pt"})
  for name, content in (("config.json", unet), ("scheduler_config.json", scheduler)):
    with open(os.path.join(out, name), "w") as f:
      json.dump(content, f, indent=2, sort_keys=True)
      f.write("\n")
