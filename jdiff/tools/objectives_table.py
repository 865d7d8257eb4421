"""Table 4.4 of papers/hse_coursework.txt on the quickstart digits: one model per objective.

Rows: DDPM (L_simple, t uniform), Importance Sampling (loss-aware t), Importance Sampling +2
(two extra forward-only history updates per step), IWDiff (k = 2 draws), IWDiff + Importance
Sampling. Columns: train time relative to DDPM (steady-state seconds per step, compile
excluded) and quality, the Digits Frechet Distance of EMA samples (jdiff.evaluation.digits_fd, a
CPU-scale stand-in for FID; lower is better). The paper's FIDs: 4.93, 4.09, 4.33, 3.69, 3.42
with time ratios 1.00, 1.60, 2.13, 2.40, 2.91 (CIFAR-10, 150k steps).

Full run (quickstart scale: 3000 steps each, T = 1000; about an hour on 2 CPU cores):
  python -m jdiff.experiments.objectives_table --workdir=workdirs/objectives_table
Reduced smoke run (minutes; numbers mean little):
  python -m jdiff.experiments.objectives_table --workdir=/tmp/objectives_table \
      --num_steps=200 --num_timesteps=100 --num_samples=128
Writes <workdir>/objectives_table.json and prints the table.
"""

import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from jdiff import config_lib
from jdiff import data as data_lib
from jdiff import depth as depth_lib
from jdiff import parallel
from jdiff import sampling
from jdiff import train as train_lib
from jdiff.evaluation import digits_fd
from jdiff.models import build_model

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the JSON table goes.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 3000, "Training steps per objective.")
_NUM_TIMESTEPS = flags.DEFINE_integer("num_timesteps", 1000, "Diffusion steps T.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 512, "Samples per Digits FD value.")
_IWDIFF_K = flags.DEFINE_integer("iwdiff_k", 2, "IWDiff noise draws (the paper: 2).")
flags.mark_flags_as_required(["workdir"])

# name -> config.training overrides.
SETUPS = {
    "DDPM": {},
    "Importance Sampling": {"timestep_sampler": "loss_aware"},
    "Importance Sampling +2": {"timestep_sampler": "loss_aware", "extra_updates": 2},
    "IWDiff": {"loss": "iwdiff"},
    "IWDiff + Importance Sampling": {"loss": "iwdiff", "timestep_sampler": "loss_aware"},
}
PAPER = {  # Table 4.4: (train time ratio, FID)
    "DDPM": (1.00, 4.93), "Importance Sampling": (1.60, 4.09), "Importance Sampling +2": (2.13, 4.33),
    "IWDiff": (2.40, 3.69), "IWDiff + Importance Sampling": (2.91, 3.42),
}
QUICKSTART = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "quickstart.py")


def setup_config(overrides: dict):
  config = config_lib.load_sibling_config(QUICKSTART, "quickstart.py")
  config.diffusion.num_timesteps = _NUM_TIMESTEPS.value
  config.training.num_steps = _NUM_STEPS.value
  config.training.warmup_steps = min(config.training.warmup_steps, _NUM_STEPS.value // 2)
  config.training.iwdiff_k = _IWDIFF_K.value
  for field, value in overrides.items():
    config.training[field] = value
  config_lib.validate(config)
  return config


def train_and_time(config):
  """(EMA params, seconds per step): the first step (compile) is excluded from the timing."""
  mesh = parallel.make_mesh()
  model = build_model(config)
  optimizer = train_lib.make_optimizer(config.training)
  state = train_lib.init_state(config, model, optimizer, mesh)
  train_step = train_lib.make_train_step(config, model, train_lib.build_diffusion(config),
                                         optimizer, mesh)
  stream = data_lib.BatchStream(data_lib.load_images(config.data), config.training.batch_size,
                                config.seed)
  losses = []
  start = time.perf_counter()
  for step in range(config.training.num_steps):
    if step == 1:
      jax.block_until_ready(state)
      start = time.perf_counter()
    state, metrics = train_step(state, parallel.global_batch_from_local(stream.batch(step), mesh))
    losses.append(metrics["loss"])
  jax.block_until_ready(state)
  seconds_per_step = (time.perf_counter() - start) / max(config.training.num_steps - 1, 1)
  losses = np.asarray(jax.device_get(losses))
  if not np.all(np.isfinite(losses)):
    raise train_lib.NonFiniteLossError("non-finite training loss in the objectives table")
  return state.ema_params, seconds_per_step, float(losses[-100:].mean())


def digits_fd_of_samples(config, params) -> float:
  model = build_model(config)
  batch_size = config.sampling.batch_size
  sample_fn = sampling.make_sample_fn(
      sampling.build_sampler(config, train_lib.build_diffusion(config)),
      lambda p: depth_lib.depth_model_fn(model, p), parallel.make_mesh(),
      train_lib.image_shape(config), batch_size)
  images = np.concatenate([
      np.asarray(sample_fn(params, jax.random.fold_in(jax.random.key(config.seed), i)))
      for i in range(-(-_NUM_SAMPLES.value // batch_size))])
  return float(digits_fd.digits_frechet_distance(images[:_NUM_SAMPLES.value]))


def print_table(rows: dict) -> None:
  print(f"Table 4.4 on digits ({_NUM_STEPS.value} steps, T={_NUM_TIMESTEPS.value}, "
        f"{_NUM_SAMPLES.value} samples; Digits FD: lower is better)")
  print(f"{'setup':<30}{'time ratio':>12}{'Digits FD':>11}{'paper ratio':>13}{'paper FID':>11}")
  for name, row in rows.items():
    paper_ratio, paper_fid = PAPER[name]
    print(f"{name:<30}{row['train_time_ratio']:>12.2f}{row['digits_fd']:>11.2f}"
          f"{paper_ratio:>13.2f}{paper_fid:>11.2f}", flush=True)


def main(argv):
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  rows = {}
  for name, overrides in SETUPS.items():
    config = setup_config(overrides)
    params, seconds_per_step, final_loss = train_and_time(config)
    # final_loss: mean train loss of the last 100 steps (reweighted by 1 / (T p_t) under
    # importance sampling, so comparable across rows only roughly).
    rows[name] = {"overrides": overrides, "seconds_per_step": seconds_per_step,
                  "final_loss": final_loss, "digits_fd": digits_fd_of_samples(config, params)}
    for row in rows.values():
      row["train_time_ratio"] = row["seconds_per_step"] / rows["DDPM"]["seconds_per_step"]
    print_table(rows)
  path = os.path.join(_WORKDIR.value, "objectives_table.json")
  with open(path, "w") as f:
    json.dump({"num_steps": _NUM_STEPS.value, "num_timesteps": _NUM_TIMESTEPS.value,
               "num_samples": _NUM_SAMPLES.value, "iwdiff_k": _IWDIFF_K.value, "rows": rows,
               "paper": {name: {"train_time_ratio": r, "fid": f} for name, (r, f) in PAPER.items()}},
              f, indent=2)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
