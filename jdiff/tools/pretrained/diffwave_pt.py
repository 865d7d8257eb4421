"""The DiffWave reference code's PyTorch checkpoints (philsyn/DiffWave-unconditional, the SC09
model of FastDPM's audio experiments) -> jdiff's DiffWave (jdiff/models/diffwave.py).

A checkpoint is torch.save({'model_state_dict': ..., 'optimizer_state_dict': ...}) of
WaveNet_Speech_Commands (read here without torch; the optimizer state is not read). Its modules:

  init_conv.0.conv                          init_conv   (weight-normed 1x1 conv)
  residual_layer.fc_t1, fc_t2               fc_t1, fc_t2
  residual_layer.residual_blocks.n.fc_t     residual_n/fc_t
  ....dilated_conv_layer.conv, res_conv, skip_conv   residual_n/dilated_conv, res_conv, skip_conv
  final_conv.0.conv, final_conv.2.conv      final_conv, out_conv (no weight norm)

Weight norm: torch keeps weight_g [out, 1, 1] and weight_v [out, in, k] (nn.utils.weight_norm;
torch.nn.utils.parametrizations names them parametrizations.weight.original0 / original1), flax's
WeightNorm the kernel v [k, in, out] and one scale per output channel: w = g v / ||v|| both ways.
Linear weights [out, in] transpose to dense kernels [in, out].

The architecture is read off the shapes; the dilation cycle and the diffusion (T, beta_0, beta_T)
come from the reference's config.json (wavenet_config, diffusion_config) when given, else from
DiffWave-unconditional's released config (cycle 12, T = 200, betas 1e-4 .. 0.02).

The LJSpeech vocoder (philsyn/DiffWave-Vocoder, WaveNet_vocoder) is the same network with mel
conditioning: each residual layer has its own weight-normed upsampler (upsample_conv2d.{0,1}:
ConvTranspose2d (3, 2s), stride (1, s), s = 16) and mel_conv. jdiff's DiffWave computes it with
mel_upsampler='per_layer'; torch's transposed conv is flax's with the kernel flipped in both axes.
Its mel features (Tacotron STFT, log mel up to 8 kHz) are not jdiff.audio's, so jdiff's
--mode=sample conditions an imported vocoder on other features than it was trained on
(docs/pretrained.md); the network itself is the reference's.
"""

import io
import json
import os
import re
import struct
import zipfile
from typing import Dict, Mapping, Optional

import numpy as np

from jdiff.errors import CheckpointMismatchError, ConfigError
from jdiff.evaluation import torch_weights
from jdiff.tools.pretrained import common

RELEASED = {"dilation_cycle": 12, "T": 200, "beta_0": 1e-4, "beta_T": 0.02}


def _materialize(obj, storage_bytes) -> Dict[str, np.ndarray]:
  state = obj.get("model_state_dict", obj) if isinstance(obj, Mapping) else obj
  if not isinstance(state, Mapping):
    raise ConfigError("the checkpoint holds no state dict ('model_state_dict')")
  return torch_weights._build_state_dict(state, storage_bytes)  # pylint: disable=protected-access


def read_checkpoint(path: str) -> Dict[str, np.ndarray]:
  """model_state_dict of a torch.save'd checkpoint (zip or legacy format), without torch."""
  unpickler_class = torch_weights._StateDictUnpickler  # pylint: disable=protected-access
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
          raise ValueError("zip archive without exactly one <prefix>/data.pkl")
        prefix = pickles[0][:-len("data.pkl")]
        obj = unpickler_class(io.BytesIO(archive.read(pickles[0]))).load()
        storage_bytes = {name[len(prefix + "data/"):]: archive.read(name)
                         for name in names if name.startswith(prefix + "data/")}
      return _materialize(obj, storage_bytes)
    with open(path, "rb") as f:
      load = lambda: unpickler_class(f).load()
      if load() != torch_weights.LEGACY_MAGIC_NUMBER:
        raise ValueError("neither a zip archive nor a legacy torch file")
      load()  # protocol version
      load()  # system info
      unpickler = unpickler_class(f)
      obj = unpickler.load()
      storage_bytes = {}
      for key in load():
        spec = unpickler.storages[str(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        storage_bytes[str(key)] = f.read(numel * spec.dtype.itemsize)
    return _materialize(obj, storage_bytes)
  except OSError as e:
    raise ConfigError(f"--source={path}: cannot read it ({e.strerror})") from None
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (a file that is no torch checkpoint)
    raise ConfigError(f"--source={path}: not a torch checkpoint ({type(e).__name__}: "
                      f"{str(e).strip()[:200]})") from None


def _weight_norm_names(prefix: str, arrays) -> tuple:
  """(g name, v name) of a weight-normed module in either torch naming."""
  if f"{prefix}.weight_g" in arrays:
    return f"{prefix}.weight_g", f"{prefix}.weight_v"
  return (f"{prefix}.parametrizations.weight.original0",
          f"{prefix}.parametrizations.weight.original1")


def jdiff_config(arrays: Mapping[str, np.ndarray], reference_config: Optional[dict] = None):
  from jdiff import audio  # pylint: disable=g-import-not-at-top
  wavenet = dict((reference_config or {}).get("wavenet_config", {}))
  diffusion = dict((reference_config or {}).get("diffusion_config", {}))
  _, v_name = _weight_norm_names("init_conv.0.conv", arrays)
  if v_name not in arrays:
    raise CheckpointMismatchError("the checkpoint has no init_conv.0.conv weights: not a "
                                  "checkpoint of DiffWave-unconditional's WaveNet_Speech_Commands")
  residual_channels, in_channels = arrays[v_name].shape[:2]
  layers = sorted({int(m.group(1)) for name in arrays
                   for m in [re.match(r"residual_layer\.residual_blocks\.(\d+)\.", name)] if m})
  _, skip_v = _weight_norm_names("residual_layer.residual_blocks.0.skip_conv", arrays)
  skip_channels = arrays[skip_v].shape[0] if skip_v in arrays else residual_channels
  embed = (arrays["residual_layer.fc_t1.weight"].shape[1],
           arrays["residual_layer.fc_t1.weight"].shape[0],
           arrays["residual_layer.fc_t2.weight"].shape[0])
  out_channels = arrays["final_conv.2.conv.weight"].shape[0]
  mel_v = _weight_norm_names("residual_layer.residual_blocks.0.mel_conv.conv", arrays)[1]
  vocoder = mel_v in arrays
  if vocoder:
    n_mels = int(arrays[mel_v].shape[1])
    _, up_v = _weight_norm_names("residual_layer.residual_blocks.0.upsample_conv2d.0", arrays)
    stride = int(arrays[up_v].shape[-1]) // 2 if up_v in arrays else 16
  for field, value, expected in (("in_channels", in_channels, 1), ("out_channels", out_channels, 1)):
    if value != expected or wavenet.get(field, expected) != expected:
      common.refuse(field, int(value), str(expected), "wavenet_config")
  for field, value in (("res_channels", residual_channels), ("skip_channels", skip_channels),
                       ("num_res_layers", len(layers)), ("diffusion_step_embed_dim_in", embed[0]),
                       ("diffusion_step_embed_dim_mid", embed[1]),
                       ("diffusion_step_embed_dim_out", embed[2])):
    if field in wavenet and wavenet[field] != value:
      raise CheckpointMismatchError(f"config.json wavenet_config.{field}={wavenet[field]} but the "
                                    f"weights have {value}")
  config = common.new_config()
  if vocoder:
    # LJSpeech at 22.05 kHz; clips a whole number of hops long (the reference crops 16000).
    hop = stride * stride
    config.data.update(dict(kind="audio", source="ljspeech", num_channels=1, random_flip=False,
                            audio_length=hop * (16000 // hop + 1), sample_rate=22050))
    config.diffwave.update(dict(n_mels=n_mels, mel_hop=hop, mel_n_fft=1024))
  else:
    config.data.update(dict(kind="audio", source="sc09", num_channels=1, random_flip=False,
                            audio_length=16000, sample_rate=16000, words=audio.DIGITS))
  config.model.kind = "diffwave"
  config.model.dropout = 0.0
  config.diffwave.update(dict(
      residual_channels=int(residual_channels), skip_channels=int(skip_channels),
      num_layers=len(layers), embed_dims=tuple(int(e) for e in embed), weight_norm=True,
      dilation_cycle=int(wavenet.get("dilation_cycle", RELEASED["dilation_cycle"]))))
  # The reference adds the step embedding to the residual in place (DiffWave.step_in_residual).
  config.diffwave.step_in_residual = True
  # The vocoder upsamples the mel in every layer (DiffWave.mel_upsampler).
  config.diffwave.mel_upsampler = "per_layer" if vocoder else "shared"
  config.diffusion.update(dict(
      num_timesteps=int(diffusion.get("T", RELEASED["T"])),
      beta_start=float(diffusion.get("beta_0", RELEASED["beta_0"])),
      beta_end=float(diffusion.get("beta_T", RELEASED["beta_T"])),
      beta_schedule="linear", variance_type="fixedsmall"))
  config.training.update(dict(batch_size=16, num_steps=1_000_000, learning_rate=2e-4,
                              warmup_steps=0, ema_decay=0.9999, checkpoint_every=5000))
  config.sampling.update(dict(batch_size=16, num_samples=16, clip_x0="off"))
  config.evaluation.metrics = ("sc09_fd",)
  return config


def params_from_state_dict(config, arrays: Mapping[str, np.ndarray], where: str):
  source = common.Source(arrays, where)
  params = {}

  def conv(prefix, path, weight_norm=True):
    if weight_norm:
      g_name, v_name = _weight_norm_names(prefix, arrays)
      params[path + ("weight_norm", "conv/kernel/scale")] = source.take(g_name).reshape(-1)
      params[path + ("conv", "kernel")] = np.transpose(source.take(v_name), (2, 1, 0))
    else:
      params[path + ("conv", "kernel")] = np.transpose(source.take(f"{prefix}.weight"), (2, 1, 0))
    params[path + ("conv", "bias")] = source.take(f"{prefix}.bias")

  def dense(prefix, path):
    params[path + ("kernel",)] = np.transpose(source.take(f"{prefix}.weight"))
    params[path + ("bias",)] = source.take(f"{prefix}.bias")

  conv("init_conv.0.conv", ("init_conv",))
  dense("residual_layer.fc_t1", ("fc_t1",))
  dense("residual_layer.fc_t2", ("fc_t2",))
  for n in range(config.diffwave.num_layers):
    prefix = f"residual_layer.residual_blocks.{n}"
    dense(f"{prefix}.fc_t", (f"residual_{n}", "fc_t"))
    conv(f"{prefix}.dilated_conv_layer.conv", (f"residual_{n}", "dilated_conv"))
    conv(f"{prefix}.res_conv", (f"residual_{n}", "res_conv"))
    conv(f"{prefix}.skip_conv", (f"residual_{n}", "skip_conv"))
    if config.diffwave.n_mels:
      conv(f"{prefix}.mel_conv.conv", (f"residual_{n}", "mel_conv"))
      for i in range(2):
        g_name, v_name = _weight_norm_names(f"{prefix}.upsample_conv2d.{i}", arrays)
        path = (f"residual_{n}", "mel_upsampler")
        params[path + (f"weight_norm_{i}", f"upsample_{i}/kernel/scale")] = (
            source.take(g_name).reshape(-1))
        # torch's ConvTranspose2d weight [in 1, out 1, kh, kw] is flax's kernel flipped.
        params[path + (f"upsample_{i}", "kernel")] = np.transpose(
            source.take(v_name)[:, :, ::-1, ::-1], (2, 3, 0, 1))
        params[path + (f"upsample_{i}", "bias")] = source.take(f"{prefix}.upsample_conv2d.{i}.bias")
  conv("final_conv.0.conv", ("final_conv",))
  conv("final_conv.2.conv", ("out_conv",), weight_norm=False)
  return common.finish(config, params, source, reference_model(config))


def reference_model(config):
  """The jdiff DiffWave that computes the reference's network: builders.build_model passes
  config.diffwave's reference fields (step_in_residual, mel_upsampler) on."""
  from jdiff import builders  # pylint: disable=g-import-not-at-top
  return builders.build_model(config)


def load(path: str, config_path: Optional[str] = None):
  """(config, params, step, description) of a reference checkpoint (<iteration>.pkl)."""
  reference_config = None
  if config_path:
    try:
      with open(config_path) as f:
        reference_config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ConfigError(f"--diffwave_config={config_path}: cannot read it ({e})") from None
  arrays = {k: np.asarray(v, np.float32) for k, v in read_checkpoint(path).items()}
  if arrays and all(k.startswith("module.") for k in arrays):  # saved from a DataParallel wrapper
    arrays = {k[len("module."):]: v for k, v in arrays.items()}
  config = jdiff_config(arrays, reference_config)
  params = params_from_state_dict(config, arrays, path)
  match = re.match(r"(\d+)\.(pkl|pt|pth)$", os.path.basename(path))
  return config, params, int(match.group(1)) if match else 0, path
