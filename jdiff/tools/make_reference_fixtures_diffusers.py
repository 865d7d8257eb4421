"""Makes tests/fixtures/pretrained/diffusers_*: tiny diffusers UNet2DModels and their own outputs.

Run once, with the reference library (the `convert` extra: torch, diffusers), not jdiff:

  pip install torch==2.13.0 diffusers safetensors numpy
  python jdiff/tools/make_reference_fixtures_diffusers.py --out=tests/fixtures/pretrained

It writes
  diffusers_tiny/          a UNet2DModel in the layout of google/ddpm-cifar10-32 (DDPM blocks,
                           downsample_padding 0, freq_shift 1, one attention head), 16x16 input,
                           block_out_channels (8, 16), 2 layers per block, attention at 8x8, random
                           weights (every parameter, GroupNorm affines included), saved by
                           save_pretrained (config.json + diffusion_pytorch_model.safetensors), and
                           the DDPMScheduler's scheduler_config.json
  diffusers_legacy_bin/    the same weights as a .bin state dict (torch.save) with the attention
                           keys of the 2022 hub checkpoints (query / key / value / proj_attn), as
                           google/ddpm-cifar10-32 still stores them; diffusers loads it (checked)
  diffusers_tiny_outputs.npz  x [2, 3, 16, 16] (NCHW, fixed seed), t [2] (one integer step, one
                           fractional: FastDPM feeds continuous steps), eps = the model's output

--check_export=<folder>: loads a folder that `python -m jdiff.tools.import_weights --to=diffusers`
wrote with UNet2DModel.from_pretrained and DDPMScheduler.from_pretrained, runs it on the inputs
in <folder>/jdiff_outputs.npz (x, t, eps: jdiff's own output) and prints the largest relative
difference (what the export test cannot check without torch).
"""

import argparse
import json
import os
import shutil

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel

TINY_CONFIG = dict(
    sample_size=16, in_channels=3, out_channels=3, center_input_sample=False,
    time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(8, 16), layers_per_block=2, mid_block_scale_factor=1,
    downsample_padding=0, act_fn="silu", attention_head_dim=None, norm_num_groups=4,
    norm_eps=1e-6)

DEPRECATED_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def relative_error(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def make(out):
  torch.manual_seed(0)
  model = UNet2DModel(**TINY_CONFIG).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      # Random everything (no zero-initialised layer hides a wrong mapping); scaled per fan-in
      # so activations stay O(1) through the tiny net.
      fan_in = p[0].numel() if p.ndim > 1 else 1
      scale = 1.0 / np.sqrt(fan_in) if p.ndim > 1 else 0.3
      p.copy_(torch.randn_like(p) * scale + (1.0 if name.endswith("norm1.weight") or
                                            name.endswith("norm2.weight") else 0.0))
  tiny = os.path.join(out, "diffusers_tiny")
  shutil.rmtree(tiny, ignore_errors=True)
  model.save_pretrained(tiny, safe_serialization=True)
  DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                variance_type="fixed_small", clip_sample=True).save_pretrained(tiny)

  rng = np.random.RandomState(0)
  x = rng.randn(2, 3, 16, 16).astype(np.float32)
  t = np.array([3.0, 517.25], np.float32)
  with torch.no_grad():
    eps = model(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
  np.savez(os.path.join(out, "diffusers_tiny_outputs.npz"), x=x, t=t, eps=eps)

  # The hub's 2022 layout: a .bin state dict with the deprecated attention names.
  legacy = os.path.join(out, "diffusers_legacy_bin")
  shutil.rmtree(legacy, ignore_errors=True)
  os.makedirs(legacy)
  state = {}
  for key, value in model.state_dict().items():
    for new, old in DEPRECATED_ATTENTION.items():
      if ".attentions." in key and f".{new}." in key:
        key = key.replace(f".{new}.", f".{old}.")
    state[key] = value.clone()
  torch.save(state, os.path.join(legacy, "diffusion_pytorch_model.bin"))
  for name in ("config.json", "scheduler_config.json"):
    shutil.copy(os.path.join(tiny, name), legacy)
  reloaded = UNet2DModel.from_pretrained(legacy).eval()
  with torch.no_grad():
    eps_legacy = reloaded(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
  print("legacy .bin reloaded by diffusers, max relative difference:",
        relative_error(eps_legacy, eps))
  for name in sorted(os.listdir(out)):
    path = os.path.join(out, name)
    size = (sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
            if os.path.isdir(path) else os.path.getsize(path))
    print(f"{name}: {size} bytes")


def check_export(folder):
  model = UNet2DModel.from_pretrained(folder).eval()
  scheduler = DDPMScheduler.from_pretrained(folder)
  data = np.load(os.path.join(folder, "jdiff_outputs.npz"))
  with torch.no_grad():
    eps = model(torch.from_numpy(data["x"]), torch.from_numpy(data["t"])).sample.numpy()
  print(json.dumps({"config": dict(model.config), "betas[:3]": scheduler.betas[:3].tolist()},
                   default=str)[:400])
  print("diffusers vs jdiff on the exported model, max relative difference:",
        relative_error(eps, data["eps"]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="tests/fixtures/pretrained")
  parser.add_argument("--check_export", default="")
  args = parser.parse_args()
  if args.check_export:
    check_export(args.check_export)
  else:
    os.makedirs(args.out, exist_ok=True)
    make(args.out)


if __name__ == "__main__":
  main()
