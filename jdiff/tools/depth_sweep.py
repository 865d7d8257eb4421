"""Adaptive-depth quality sweep on the quickstart digits: the paper's Table 1 and a trade-off plot.

Trains the quickstart U-Net once per (skip type, training scheme) and samples each at
c in {0, 1, 2, 3, 5}; quality is the Digits Frechet Distance
(jdiff.evaluation.digits_fd: a Frechet distance on features of a small digits classifier, a
CPU-scale stand-in for FID; lower is better), time saved is measured on the sampling runs
against c = 0 of the same model. Rows:
  full (baseline)   trained on the full network only, shortcut (zero skip) at sampling only:
                    the paper's "DDPM" row;
  <skip>/random     k uniform per batch: one model serves every c;
  <skip>/bucketed   batches bucketed by k(t) of the c being evaluated: one model per c > 0
                    (at c = 0 bucketed training is full training, so the baseline serves).
Full sweep (about 3 h on 2 CPU cores: 1 + 3 * 5 trainings of 3000 steps, 80 sampling runs):
  python -m jdiff.experiments.depth_sweep --workdir=workdirs/depth_sweep
Reduced smoke run (about 10 minutes; the numbers mean little):
  python -m jdiff.experiments.depth_sweep --workdir=/tmp/depth_sweep --num_steps=30 \
      --num_timesteps=50 --num_samples=64 --skip_types=zero
Writes <workdir>/depth_sweep.json and depth_sweep.png; trainings resume from their checkpoints.
"""

import json
import os
import time

import jax
import matplotlib
import numpy as np
from absl import app, flags

from jdiff import config_lib
from jdiff import depth as depth_lib
from jdiff import parallel
from jdiff import sampling
from jdiff import train as train_lib
from jdiff.evaluation import digits_fd
from jdiff.models import build_model
from jdiff.models.unet import SKIP_TYPES

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints of every model, json and plot.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 3000, "Training steps per model.")
_NUM_TIMESTEPS = flags.DEFINE_integer("num_timesteps", 1000, "Diffusion steps T.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 512, "Samples per Digits FD value.")
_SKIP_TYPES = flags.DEFINE_list("skip_types", list(SKIP_TYPES), "Skip types to train.")
_SCHEMES = flags.DEFINE_list("schemes", ["random", "bucketed"], "Training schemes to train.")
flags.mark_flags_as_required(["workdir"])

POWERS = (0, 1, 2, 3, 5)
QUICKSTART = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "quickstart.py")


def quickstart_config():
  config = config_lib.load_sibling_config(QUICKSTART, "quickstart.py")
  config.diffusion.num_timesteps = _NUM_TIMESTEPS.value
  config.training.num_steps = _NUM_STEPS.value
  config.training.checkpoint_every = min(config.training.checkpoint_every, _NUM_STEPS.value)
  config.training.log_every = min(config.training.log_every, _NUM_STEPS.value)
  config.training.warmup_steps = min(config.training.warmup_steps, _NUM_STEPS.value // 2)
  return config


def train_model(config, name: str):
  """EMA params of the model trained with this config under <workdir>/<name>."""
  return train_lib.train(config, os.path.join(_WORKDIR.value, name)).state.ema_params


def sample_and_score(config, params, power: float) -> dict:
  """Digits FD and sampling seconds of num_samples images at k(t) with this c."""
  config = config.copy_and_resolve_references()
  config.depth.power = float(power)
  model = build_model(config)
  batch_size = config.sampling.batch_size
  sample_fn = sampling.make_sample_fn(
      sampling.build_sampler(config, train_lib.build_diffusion(config)),
      lambda p: depth_lib.depth_model_fn(model, p), parallel.make_mesh(),
      train_lib.image_shape(config), batch_size)
  rngs = [jax.random.fold_in(jax.random.key(config.seed), i)
          for i in range(-(-_NUM_SAMPLES.value // batch_size))]
  compiled = sample_fn.lower(params, rngs[0]).compile()  # compile time is not sampling time
  start = time.perf_counter()
  images = np.concatenate([np.asarray(compiled(params, rng)) for rng in rngs])
  seconds = time.perf_counter() - start
  return {"digits_fd": float(digits_fd.digits_frechet_distance(images[:_NUM_SAMPLES.value])),
          "seconds": seconds}


def sweep() -> dict:
  base = quickstart_config()
  baseline = train_model(base, "full")
  rows = {"full (baseline)": {str(c): sample_and_score(base, baseline, c) for c in POWERS}}
  for skip_type in _SKIP_TYPES.value:
    for scheme in _SCHEMES.value:
      config = base.copy_and_resolve_references()
      config.model.skip_type = skip_type
      config.depth.training = scheme
      if scheme == "random":
        params = train_model(config, f"{skip_type}_random")
        row = {str(c): sample_and_score(config, params, c) for c in POWERS}
      else:
        row = {"0": rows["full (baseline)"]["0"]}  # the same model and sampler at c = 0
        for power in POWERS[1:]:
          config.depth.power = float(power)
          params = train_model(config, f"{skip_type}_bucketed_c{power}")
          row[str(power)] = sample_and_score(config, params, power)
      rows[f"{skip_type}/{scheme}"] = row
      print_table(rows)
  for row in rows.values():
    for entry in row.values():
      entry["time_saved"] = 1.0 - entry["seconds"] / row["0"]["seconds"]
  return rows


def print_table(rows: dict) -> None:
  print(f"Digits FD (lower is better; {_NUM_SAMPLES.value} samples, {_NUM_STEPS.value} training "
        f"steps, T={_NUM_TIMESTEPS.value})")
  print(f"{'model':<24}" + "".join(f"{f'c = {c}':>10}" for c in POWERS))
  for name, row in rows.items():
    print(f"{name:<24}" + "".join(f"{row[str(c)]['digits_fd']:>10.2f}" for c in POWERS),
          flush=True)


def plot(rows: dict, path: str) -> None:
  figure, axes = plt.subplots(figsize=(6, 4.5))
  for name, row in rows.items():
    axes.plot([100 * row[str(c)]["time_saved"] for c in POWERS],
              [row[str(c)]["digits_fd"] for c in POWERS], marker="o", label=name)
  axes.set_xlabel("sampling time saved against c = 0 (%)")
  axes.set_ylabel("Digits FD (lower is better)")
  axes.set_title("Adaptive depth on digits (points: c = 0, 1, 2, 3, 5)")
  axes.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def main(argv):
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  rows = sweep()
  print_table(rows)
  with open(os.path.join(_WORKDIR.value, "depth_sweep.json"), "w") as f:
    json.dump({"num_steps": _NUM_STEPS.value, "num_timesteps": _NUM_TIMESTEPS.value,
               "num_samples": _NUM_SAMPLES.value, "rows": rows}, f, indent=2)
  plot(rows, os.path.join(_WORKDIR.value, "depth_sweep.png"))
  print(f"wrote {_WORKDIR.value}/depth_sweep.json and depth_sweep.png")


if __name__ == "__main__":
  app.run(main)
