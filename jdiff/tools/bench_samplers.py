"""Sampler benchmark (config.bench.kind = 'samplers'): seconds per sample and network
evaluations of each registered sampler's bench rows (jdiff/samplers.py: DDPM-1000,
respaced-100/50, DDIM-50/20/10, FastDPM VAR/STEP x DDPM-rev/DDIM-rev at S in {10, 20, 50, 100},
DPM-Solver++ 2M and UniPC bh1 at 20/10/5), and surrogate diffusion at each config.surrogate.t_mids; each
relative to DDPM (all T steps), and against its step share: seconds / ((NFE / T) x DDPM's
seconds), 1.0 when a step costs what a DDPM step costs (median, min..max over rounds). Every
sampler is compiled first, then all run once per round, in turn, bench.num_iters rounds after a
warm-up; s/sample is the best round, the ratios are taken within each round. With bench.quality_samples > 0 on the
digits, each row also gets the digits Frechet distance of that many samples.

Writes <workdir>/bench_samplers.json and prints a table (Table 4.5's shape for the surrogate).
Uses the EMA params of the workdir's latest checkpoint, or random ones when there is none
(speeds are the same; quality then means nothing).

  python -m jdiff.main --config=configs/quickstart_adaptive.py --workdir=workdirs/quickstart_adaptive \\
      --mode=bench --config.bench.kind=samplers
"""

import os
from typing import List, Tuple

import jax
import numpy as np
from absl import logging

from jdiff import builders
from jdiff import parallel
from jdiff import samplers
from jdiff import sampling
from jdiff.errors import CheckpointMissingError
from jdiff.tools import report
from jdiff.tools import timing

def _specs(config) -> List[Tuple[str, str, dict]]:
  """(family, label, builders.build_plan overrides) for every sampler the bench runs: each
  registered sampler's bench rows (jdiff/samplers.py; ancestral's family is 'ddpm', the
  baseline), then surrogate diffusion at each t_mid."""
  specs = []
  for name, sampler in samplers.REGISTRY.items():
    family = "ddpm" if name == "ancestral" else name
    specs += [(family, label, overrides) for label, overrides in sampler.bench(config)]
  if config.surrogate.kind != "none":
    specs += [("surrogate", f"{config.surrogate.kind}+{config.sampling.name} t_mid={t_mid}",
               dict(t_mid=t_mid)) for t_mid in config.surrogate.t_mids]
  wanted = tuple(config.bench.samplers) or samplers.bench_families()
  return [spec for spec in specs if spec[0] in wanted or spec[0] == "ddpm"]


def _quality(compiled, params, num_samples: int, batch_size: int) -> float:
  from jdiff.evaluation import digits_fd  # pylint: disable=g-import-not-at-top
  batches = [np.asarray(jax.device_get(compiled(params, jax.random.key(1000 + i))))
             for i in range(-(-num_samples // batch_size))]
  return float(digits_fd.digits_frechet_distance(np.concatenate(batches)[:num_samples]))


def run(config, workdir: str) -> dict:
  mesh = parallel.make_mesh()
  model = builders.build_model(config)
  diffusion = builders.build_diffusion(config)
  try:
    params, step = builders.restore_ema_params(config, workdir, model, mesh)
  except CheckpointMissingError:
    logging.warning("no checkpoint in %s: timing with random params", workdir)
    params, step = builders.build_state(config, model, builders.build_optimizer(config.training),
                                        mesh).ema_params, None
  surrogate_at = None
  if config.surrogate.kind != "none":
    from jdiff import surrogate as surrogate_lib  # pylint: disable=g-import-not-at-top
    surrogate_at = surrogate_lib.load_surrogate(config, mesh)
  quality = config.bench.quality_samples > 0 and config.data.source == "digits"
  batch_size = config.sampling.batch_size
  shape = builders.image_shape(config)
  T = config.diffusion.num_timesteps

  rows, calls = [], {}
  for family, label, overrides in _specs(config):
    surrogate_evaluations = 0
    if family == "surrogate":
      surrogate_fn, surrogate_evaluations = surrogate_at(overrides["t_mid"])
      sampler, evaluations = sampling.with_surrogate(builders.build_plan(config, diffusion),
                                                     surrogate_fn, overrides["t_mid"], T)
    else:
      plan = builders.build_plan(config, diffusion, **overrides)
      sampler = lambda model_fn, x_T, key, plan=plan: sampling.run_plan(plan, model_fn, x_T, key)
      evaluations = plan.num_evaluations
    sample_fn = builders.make_sample_fn(sampler, model, mesh, shape, batch_size)
    stats, compiled = timing.compile_only(sample_fn, (params, jax.random.key(0)))
    calls[label] = lambda compiled=compiled: compiled(params, jax.random.key(0))
    row = {"family": family, "sampler": label, "network_evaluations": evaluations,
           "surrogate_network_evaluations": surrogate_evaluations,
           "compile_s": stats["compile_s"], "batch_size": batch_size}
    if family == "surrogate":
      row["t_mid"] = overrides["t_mid"]
    if quality:
      row["digits_fd"] = _quality(compiled, params, config.bench.quality_samples,
                                  batch_size)
    rows.append(row)
  # Every sampler once per round, in turn: a ratio of two is taken within one round.
  times = timing.interleaved_rounds(calls, config.bench.num_iters)
  ddpm = rows[0]
  for row in rows:
    seconds = np.asarray(times[row["sampler"]])
    row.update(seconds_per_sample=float(seconds.min()) / batch_size,
               median_seconds_per_sample=float(np.median(seconds)) / batch_size,
               samples_per_s=batch_size / float(seconds.min()))
    row["speedup_vs_ddpm"] = 1.0 / timing.ratio_stats(seconds, times[ddpm["sampler"]])["median"]
    # Cost against its share of the T-step sampler's, per round: 1.0 = exactly (S / T) x
    # DDPM's time for S network evaluations.
    share = row["network_evaluations"] / ddpm["network_evaluations"]
    if share > 0:  # a surrogate at t_mid = 0 makes no full-resolution evaluations
      row["cost_vs_step_share"] = timing.ratio_stats(
          seconds, share * np.asarray(times[ddpm["sampler"]]))
    # Measured cost in full-resolution network evaluations (DDPM-T's time per step is the unit),
    # so a surrogate's own evaluations count at what they cost here.
    row["full_resolution_steps"] = ddpm["network_evaluations"] * timing.ratio_stats(
        seconds, times[ddpm["sampler"]])["median"]
    logging.info("%s: %.5f s/sample, %d evaluations", row["sampler"], row["seconds_per_sample"],
                 row["network_evaluations"])
  results = {"device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
             "checkpoint_step": step, "num_timesteps": T, "batch_size": batch_size,
             "num_iters": config.bench.num_iters, "rows": rows}
  report.write_json(os.path.join(workdir, "bench_samplers.json"), results)
  print_table(results)
  return results


def print_table(results: dict) -> str:
  rows = results["rows"]
  has_fd = any("digits_fd" in row for row in rows)
  step = results["checkpoint_step"]
  return report.print_table(
      rows,
      [report.Column("sampler", "sampler"), report.Column("NFE", "network_evaluations"),
       report.Column("surrogate NFE", "surrogate_network_evaluations"),
       report.Column("full-res steps (measured)", "full_resolution_steps", ".0f"),
       report.Column("s/sample", "seconds_per_sample", ".5f"),
       report.Column("median s/sample", "median_seconds_per_sample", ".5f"),
       report.Column("samples/s", "samples_per_s", ".1f"),
       report.Column("x DDPM", "speedup_vs_ddpm", ".1f"),
       report.Column("s / ((S/T) s_DDPM)", "cost_vs_step_share",
                     lambda v: f"{v['median']:.2f} ({v['min']:.2f}..{v['max']:.2f})"),
       report.Column("compile s", "compile_s", ".2f")]
      + ([report.Column("digits FD", "digits_fd", ".3f")] if has_fd else []),
      title=(f"device: {results['device']} x{results['num_devices']}; params: "
             f"{'random' if step is None else f'step {step}'}; batch "
             f"{results.get('batch_size', 'n/a')}, {results.get('num_iters', 'n/a')} interleaved rounds"))
