"""Adaptive-depth quality sweep on the quickstart digits: the paper's Table 1 and a trade-off plot.

Table 1's layout: one model per (skip type, training scheme), each sampled at every c in
{0, 1, 2, 3, 5} (the paper's c = 0 column is its adaptively trained model run at full depth);
quality is the Digits Frechet Distance
(jdiff.evaluation.digits_fd: a Frechet distance on features of a small digits classifier, a
CPU-scale stand-in for FID; lower is better), time saved is measured on the sampling runs
against c = 0 of the same model. Rows:
  full (baseline)   trained on the full network only, shortcut (zero skip) at sampling only:
                    the paper's "DDPM" row;
  <skip>/random     k uniform per batch;
  <skip>/bucketed   batches bucketed by k(t) at c = --bucketed_power (default 2: the paper trains
                    its model "on zero skipping for c=2", Table 3, and picks c = 2 in 4.2).
--num_steps and --num_timesteps override the config's training.num_steps and
diffusion.num_timesteps; any other field: --config.<field>=<value>. Run from the repository root
(the --config path is relative to it).
Full sweep (about 1.5 h on 2 CPU cores: 1 + 3 * 2 trainings of 3000 steps, 35 sampling runs):
  python -m jdiff.tools.depth_sweep --config=configs/quickstart.py --workdir=workdirs/depth_sweep
Reduced smoke run (about 10 minutes; the numbers mean little):
  python -m jdiff.tools.depth_sweep --config=configs/quickstart.py --workdir=/tmp/depth_sweep \\
      --num_steps=30 --num_timesteps=50 --num_samples=64 --skip_types=zero
Writes <workdir>/depth_sweep.json and depth_sweep.png; trainings resume from their checkpoints.
Importing this module defines no flags (they are defined when it runs as a program); sweep()
runs the same from Python.
"""

import os
import sys
from typing import Dict, Sequence

import jax
import numpy as np
from absl import app, flags
# A bare Figure renders with the Agg backend and leaves pyplot's global state (and any display)
# alone.
from matplotlib.figure import Figure

from jdiff import builders
from jdiff import config_lib
from jdiff import parallel
from jdiff.drivers import train as train_lib
from jdiff.evaluation import digits_fd
from jdiff.models.unet import SKIP_TYPES
from jdiff.tools import cli
from jdiff.tools import report
from jdiff.tools import timing

FLAGS = flags.FLAGS
POWERS = (0, 1, 2, 3, 5)
SCHEMES = ("random", "bucketed")
BASELINE = "full (baseline)"


def define_flags():
  """The program's flags (not defined on import, so that the tools import side by side)."""
  cli.define_experiment_flags("Config file of the model swept (configs/*.py[:variant]).",
                              "Checkpoints of every model, json and plot.",
                              "Training steps per model.")
  flags.DEFINE_list("skip_types", list(SKIP_TYPES), "Skip types to train.")
  flags.DEFINE_list("schemes", list(SCHEMES), "Training schemes to train.")
  flags.DEFINE_float("bucketed_power", 2.0, "The c that bucketed training buckets by (the paper's 2).")
  flags.mark_flags_as_required(["workdir"])


def sweep_config(config, num_steps: int, num_timesteps: int):
  """A copy of config training num_steps steps at T = num_timesteps, validated."""
  config = config.copy_and_resolve_references()
  config.diffusion.num_timesteps = num_timesteps
  config.training.num_steps = num_steps
  config.training.checkpoint_every = min(config.training.checkpoint_every, num_steps)
  config.training.log_every = min(config.training.log_every, num_steps)
  config.training.warmup_steps = min(config.training.warmup_steps, num_steps // 2)
  config_lib.validate(config)
  return config


def train_model(config, workdir: str):
  """EMA params of the model trained (or resumed) with this config in workdir. A signal that
  stops the training (its checkpoint saved) stops the sweep with the training's exit code."""
  result = train_lib.train(config, workdir)
  if result.interrupted_by:
    print(f"stopped by {result.interrupted_by} while training {workdir} (step {result.step}); "
          "run the same command to resume", file=sys.stderr)
    sys.exit(result.exit_code)
  return result.state.ema_params


def sample_and_score(config, params, power: float, num_samples: int) -> dict:
  """Digits FD and sampling seconds of num_samples images at k(t) with this c (compile time
  apart: it is not sampling time)."""
  config = config.copy_and_resolve_references()
  config.depth.power = float(power)
  batch_size = config.sampling.batch_size
  sampler, _ = builders.build_sampler(config, builders.build_diffusion(config))
  sample_fn = builders.make_sample_fn(sampler, builders.build_model(config), parallel.make_mesh(),
                                      builders.image_shape(config), batch_size)
  rngs = [jax.random.fold_in(jax.random.key(config.seed), i)
          for i in range(-(-num_samples // batch_size))]
  stats, batches = timing.compile_and_map(sample_fn, [(params, rng) for rng in rngs])
  images = np.concatenate([np.asarray(batch) for batch in batches])[:num_samples]
  return {"digits_fd": float(digits_fd.digits_frechet_distance(images)),
          "seconds": stats["total_s"], "compile_s": stats["compile_s"]}


def sweep(base, workdir: str, num_samples: int, skip_types: Sequence[str] = SKIP_TYPES,
          schemes: Sequence[str] = SCHEMES, bucketed_power: float = 2.0) -> Dict[str, dict]:
  """{model: {c: {digits_fd, seconds, compile_s, time_saved}}} of every model trained from the
  config base (under workdir/<model>), each sampled at every c; the table printed as rows come in."""
  baseline = train_model(base, os.path.join(workdir, "full"))
  rows = {BASELINE: {str(c): sample_and_score(base, baseline, c, num_samples) for c in POWERS}}
  for skip_type in skip_types:
    for scheme in schemes:
      config = base.copy_and_resolve_references()
      config.model.skip_type = skip_type
      config.depth.training = scheme
      name = f"{skip_type}_random"
      if scheme == "bucketed":
        config.depth.power = float(bucketed_power)
        name = f"{skip_type}_bucketed_c{bucketed_power:g}"
      config_lib.validate(config)  # a bad --skip_types or --schemes: one line, before training
      params = train_model(config, os.path.join(workdir, name))
      rows[name.replace("_", "/", 1)] = {
          str(c): sample_and_score(config, params, c, num_samples) for c in POWERS}
      print_table(rows, base, num_samples)
  for row in rows.values():
    for entry in row.values():
      entry["time_saved"] = 1.0 - entry["seconds"] / row["0"]["seconds"]
  return rows


def print_table(rows: Dict[str, dict], config, num_samples: int) -> str:
  """Digits FD per model and c; with the time saved against c = 0 once the sweep has it."""
  has_time = all("time_saved" in entry for row in rows.values() for entry in row.values())
  cell = ((lambda entry: f"{entry['digits_fd']:.2f} ({entry['time_saved']:.0%})") if has_time
          else (lambda entry: f"{entry['digits_fd']:.2f}"))
  return report.print_table(
      [dict(row, model=name) for name, row in rows.items()],
      [report.Column("model", "model")]
      + [report.Column(f"c = {c}", str(c), cell) for c in POWERS],
      title=(f"Digits FD (lower is better; {num_samples} samples, "
             f"{config.training.num_steps} training steps, T={config.diffusion.num_timesteps})"
             + ("; in brackets: sampling time saved against c = 0" if has_time else "")))


def plot(rows: Dict[str, dict], path: str) -> str:
  figure = Figure(figsize=(6, 4.5), dpi=120)
  axes = figure.subplots()
  for name, row in rows.items():
    axes.plot([100 * row[str(c)]["time_saved"] for c in POWERS],
              [row[str(c)]["digits_fd"] for c in POWERS], marker="o", label=name)
  axes.set_xlabel("sampling time saved against c = 0 (%)")
  axes.set_ylabel("Digits FD (lower is better)")
  axes.set_title("Adaptive depth on digits (points: c = 0, 1, 2, 3, 5)")
  axes.legend(fontsize=7)
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path)
  return path


@cli.one_line_errors  # a bad config value, a damaged or mismatched checkpoint: one line
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = sweep_config(cli.load_config(FLAGS["config"]), FLAGS.num_steps, FLAGS.num_timesteps)
  rows = sweep(config, FLAGS.workdir, FLAGS.num_samples, FLAGS.skip_types, FLAGS.schemes,
               FLAGS.bucketed_power)
  print_table(rows, config, FLAGS.num_samples)
  report.write_json(os.path.join(FLAGS.workdir, "depth_sweep.json"),
                    {"config": config.to_dict(), "num_steps": FLAGS.num_steps,
                     "num_timesteps": FLAGS.num_timesteps, "num_samples": FLAGS.num_samples,
                     "bucketed_power": FLAGS.bucketed_power,
                     "rows": rows})
  if jax.process_index() == 0:
    print(f"wrote {plot(rows, os.path.join(FLAGS.workdir, 'depth_sweep.png'))}")
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
