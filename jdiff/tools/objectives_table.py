"""Table 4.4 of papers/hse_coursework.txt on the quickstart digits: one model per objective.

Trains the --config model (the quickstart's by default) once per objective.

Rows: DDPM (L_simple, t uniform), Hybrid (L_simple + 0.001 L_vlb with learned variances; not in
the paper's table), Importance Sampling (loss-aware t), Importance Sampling +2
(two extra forward-only history updates per step), IWDiff (k = 2 draws), IWDiff + Importance
Sampling. Columns: train time relative to DDPM (steady-state seconds per step, compile
excluded) and quality, the Digits Frechet Distance of EMA samples (jdiff.evaluation.digits_fd, a
CPU-scale stand-in for FID; lower is better). The paper's FIDs: 4.93, 4.09, 4.33, 3.69, 3.42
with time ratios 1.00, 1.60, 2.13, 2.40, 2.91 (CIFAR-10, 150k steps).

--num_steps and --num_timesteps override the config's training.num_steps and
diffusion.num_timesteps; any other field: --config.<field>=<value>. Run from the repository root
(the --config path is relative to it).
Full run (quickstart scale: 3000 steps each, T = 1000; about an hour on 2 CPU cores):
  python -m jdiff.tools.objectives_table --config=configs/quickstart.py \\
      --workdir=workdirs/objectives_table
Reduced smoke run (minutes; numbers mean little):
  python -m jdiff.tools.objectives_table --config=configs/quickstart.py \\
      --workdir=/tmp/objectives_table --num_steps=200 --num_timesteps=100 --num_samples=128
Writes <workdir>/objectives_table.json and prints the table. Importing this module defines no
flags (they are defined when it runs as a program); objectives_table() runs the same from Python.
"""

import os
from typing import Dict, Mapping

import jax
import numpy as np
from absl import app, flags

from jdiff import builders
from jdiff import config_lib
from jdiff import data as data_lib
from jdiff import parallel
from jdiff.drivers import train as train_lib
from jdiff.errors import NonFiniteLossError
from jdiff.evaluation import digits_fd
from jdiff.tools import cli
from jdiff.tools import report
from jdiff.tools import timing

FLAGS = flags.FLAGS


def define_flags():
  """The program's flags (not defined on import, so that the tools import side by side)."""
  cli.define_experiment_flags("Config file of the model (configs/*.py[:variant]).",
                              "Where the JSON table goes.", "Training steps per objective.")
  flags.DEFINE_integer("iwdiff_k", 2, "IWDiff noise draws (the paper: 2).")
  flags.mark_flags_as_required(["workdir"])


# name -> config overrides ("section.field": value).
SETUPS = {
    "DDPM": {},
    "Hybrid (learned variances)": {"training.loss": "hybrid",
                                   "diffusion.variance_type": "learned_range"},
    "Importance Sampling": {"training.timestep_sampler": "loss_aware"},
    "Importance Sampling +2": {"training.timestep_sampler": "loss_aware",
                               "training.extra_updates": 2},
    "IWDiff": {"training.loss": "iwdiff"},
    "IWDiff + Importance Sampling": {"training.loss": "iwdiff",
                                     "training.timestep_sampler": "loss_aware"},
}
PAPER = {  # Table 4.4: (train time ratio, FID); the hybrid loss is not in it
    "DDPM": (1.00, 4.93), "Importance Sampling": (1.60, 4.09), "Importance Sampling +2": (2.13, 4.33),
    "IWDiff": (2.40, 3.69), "IWDiff + Importance Sampling": (2.91, 3.42),
}


def base_config(config, num_steps: int, num_timesteps: int, iwdiff_k: int):
  """A copy of config training num_steps steps at T = num_timesteps (IWDiff with iwdiff_k)."""
  config = config.copy_and_resolve_references()
  config.diffusion.num_timesteps = num_timesteps
  config.training.num_steps = num_steps
  config.training.warmup_steps = min(config.training.warmup_steps, num_steps // 2)
  config.training.iwdiff_k = iwdiff_k
  return config


def setup_config(base, overrides: Mapping):
  """A copy of base with the overrides of a SETUPS value, validated."""
  config = base.copy_and_resolve_references()
  for field, value in overrides.items():
    section, name = field.split(".")
    config[section][name] = value
  config_lib.validate(config)
  return config


def train_and_time(config):
  """(EMA params, seconds per step, mean loss of the last 100 steps): the steps dispatched as a
  training loop runs them; the first step (compile) is excluded from the timing."""
  mesh = parallel.make_mesh()
  _, state, train_step = train_lib.build_fresh_training(config, mesh)
  stream = data_lib.BatchStream(data_lib.load_images(config.data), train_lib.images_per_step(config),
                                config.seed)
  stats, state, metrics = timing.run_threaded(
      train_step, state, lambda step: (parallel.global_batch_from_local(stream.batch(step), mesh),),
      config.training.num_steps, warmup=1, block_each=False)
  losses = np.asarray(jax.device_get([m["loss"] for m in metrics]))
  if not np.all(np.isfinite(losses)):
    raise NonFiniteLossError("non-finite training loss in the objectives table")
  return state.ema_params, stats["mean_s"], float(losses[-100:].mean())


def digits_fd_of_samples(config, params, num_samples: int) -> float:
  batch_size = config.sampling.batch_size
  sampler, _ = builders.build_sampler(config, builders.build_diffusion(config))
  sample_fn = builders.make_sample_fn(sampler, builders.build_model(config), parallel.make_mesh(),
                                      builders.image_shape(config), batch_size)
  images = np.concatenate([
      np.asarray(sample_fn(params, jax.random.fold_in(jax.random.key(config.seed), i)))
      for i in range(-(-num_samples // batch_size))])
  return float(digits_fd.digits_frechet_distance(images[:num_samples]))


def objectives_table(base, num_samples: int) -> Dict[str, dict]:
  """{setup: {overrides, seconds_per_step, final_loss, digits_fd, train_time_ratio}} of one model
  per SETUPS entry trained from the config base, the table printed as rows come in."""
  rows = {}
  for name, overrides in SETUPS.items():
    config = setup_config(base, overrides)
    params, seconds_per_step, final_loss = train_and_time(config)
    # final_loss: mean train loss of the last 100 steps (reweighted by 1 / (T p_t) under
    # importance sampling, so comparable across rows only roughly).
    rows[name] = {"overrides": dict(overrides), "seconds_per_step": seconds_per_step,
                  "final_loss": final_loss,
                  "digits_fd": digits_fd_of_samples(config, params, num_samples)}
    for row in rows.values():
      row["train_time_ratio"] = row["seconds_per_step"] / rows["DDPM"]["seconds_per_step"]
    print_table(rows, base, num_samples)
  return rows


def print_table(rows: Dict[str, dict], config, num_samples: int) -> str:
  return report.print_table(
      [dict(row, setup=name, **({"paper_ratio": PAPER[name][0], "paper_fid": PAPER[name][1]}
                                 if name in PAPER else {}))
       for name, row in rows.items()],
      [report.Column("setup", "setup"), report.Column("time ratio", "train_time_ratio", ".2f"),
       report.Column("s/step", "seconds_per_step", ".4f"),
       report.Column("final loss", "final_loss", ".4f"),
       report.Column("Digits FD", "digits_fd", ".2f"),
       report.Column("paper ratio", "paper_ratio", ".2f"),
       report.Column("paper FID", "paper_fid", ".2f")],
      title=(f"Table 4.4 on digits ({config.training.num_steps} steps, "
             f"T={config.diffusion.num_timesteps}, {num_samples} samples; Digits FD: lower is "
             "better)"))


@cli.one_line_errors  # a bad config value, a non-finite loss: one line
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.makedirs(FLAGS.workdir, exist_ok=True)  # an unusable --workdir fails now, not in an hour
  base = base_config(cli.load_config(FLAGS["config"]), FLAGS.num_steps, FLAGS.num_timesteps,
                     FLAGS.iwdiff_k)
  rows = objectives_table(base, FLAGS.num_samples)
  report.write_json(
      os.path.join(FLAGS.workdir, "objectives_table.json"),
      {"config": base.to_dict(), "num_steps": FLAGS.num_steps,
       "num_timesteps": FLAGS.num_timesteps, "num_samples": FLAGS.num_samples,
       "iwdiff_k": FLAGS.iwdiff_k, "rows": rows,
       "paper": {name: {"train_time_ratio": r, "fid": f} for name, (r, f) in PAPER.items()}})
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
