"""Sampler benchmark (config.bench.kind = 'samplers'): seconds per sample and network
evaluations of DDPM-1000, respaced-100/50, DDIM-50/20/10, FastDPM VAR/STEP x DDPM-rev/DDIM-rev
at S in {10, 20, 50, 100}, and surrogate diffusion at each config.surrogate.t_mids; each
relative to DDPM (all T steps) timed in the same run. With bench.quality_samples > 0 on the
digits, each row also gets the digits Frechet distance of that many samples.

Writes <workdir>/bench_samplers.json and prints a table (Table 4.5's shape for the surrogate).
Uses the EMA params of the workdir's latest checkpoint, or random ones when there is none
(speeds are the same; quality then means nothing).
"""

import json
import os
from typing import List, Tuple

import jax
import numpy as np
from absl import logging

from jdiff import bench
from jdiff import depth as depth_lib
from jdiff import generate as generate_lib
from jdiff import parallel
from jdiff import sampling
from jdiff import train as train_lib
from jdiff.errors import CheckpointMissingError
from jdiff.models import build_model

FAMILIES = ("ddpm", "respaced", "ddim", "fastdpm", "surrogate")


def _specs(config) -> List[Tuple[str, str, dict]]:
  """(family, label, build_plan overrides) for every sampler the bench runs."""
  T = config.diffusion.num_timesteps
  specs = [("ddpm", f"DDPM-{T}", dict(name="ancestral"))]
  specs += [("respaced", f"respaced-{k}", dict(name="respaced", steps=k, respacing="even"))
            for k in (100, 50) if k <= T]
  step_schedule = config.sampling.schedule if config.sampling.schedule != "linear" else "uniform"
  specs += [("ddim", f"DDIM-{k} ({step_schedule})",
             dict(name="ddim", steps=k, eta=0.0, schedule=step_schedule))
            for k in (50, 20, 10) if k <= T]
  if config.diffusion.beta_schedule == "linear" and T >= 2:
    for kind in ("var", "step"):
      for reverse, kappa in (("DDPM-rev", 1.0), ("DDIM-rev", 0.0)):
        specs += [("fastdpm", f"FastDPM-{kind.upper()}-{reverse}-{s} (quadratic)",
                   dict(name="fastdpm", steps=s, fastdpm_kind=kind, schedule="quadratic",
                        kappa=kappa)) for s in (10, 20, 50, 100) if s <= T]
  if config.surrogate.kind != "none":
    specs += [("surrogate", f"{config.surrogate.kind}+{config.sampling.name} t_mid={t_mid}",
               dict(t_mid=t_mid)) for t_mid in config.surrogate.t_mids]
  wanted = tuple(config.bench.samplers) or FAMILIES
  return [spec for spec in specs if spec[0] in wanted or spec[0] == "ddpm"]


def _quality(compiled, params, num_samples: int, batch_size: int) -> float:
  from jdiff.evaluation import digits_fd  # pylint: disable=g-import-not-at-top
  batches = [np.asarray(jax.device_get(compiled(params, jax.random.key(1000 + i))))
             for i in range(-(-num_samples // batch_size))]
  return float(digits_fd.digits_frechet_distance(np.concatenate(batches)[:num_samples]))


def run(config, workdir: str) -> dict:
  mesh = parallel.make_mesh()
  model = build_model(config)
  diffusion = train_lib.build_diffusion(config)
  try:
    params, step = generate_lib.restore_ema_params(config, workdir, model, mesh)
  except CheckpointMissingError:
    logging.warning("no checkpoint in %s: timing with random params", workdir)
    params, step = train_lib.init_state(config, model, train_lib.make_optimizer(config.training),
                                        mesh).ema_params, None
  surrogate_fn = None
  if config.surrogate.kind != "none":
    from jdiff import surrogate as surrogate_lib  # pylint: disable=g-import-not-at-top
    surrogate_fn = surrogate_lib.make_surrogate_fn(config, mesh)
  quality = config.bench.quality_samples > 0 and config.data.source == "digits"
  batch_size = config.sampling.batch_size
  shape = train_lib.image_shape(config)
  T = config.diffusion.num_timesteps
  model_fn_from_params = lambda p: depth_lib.depth_model_fn(model, p)

  rows = []
  for family, label, overrides in _specs(config):
    if family == "surrogate":
      sampler, evaluations = sampling.with_surrogate(sampling.build_plan(config, diffusion),
                                                     surrogate_fn, overrides["t_mid"], T)
    else:
      plan = sampling.build_plan(config, diffusion, **overrides)
      sampler = lambda model_fn, x_T, key, plan=plan: sampling.run_plan(plan, model_fn, x_T, key)
      evaluations = plan.num_evaluations
    sample_fn = sampling.make_sample_fn(sampler, model_fn_from_params, mesh, shape, batch_size)
    timing, compiled, _ = bench.compile_and_run(sample_fn, (params, jax.random.key(0)),
                                                config.bench.num_iters)
    row = {"family": family, "sampler": label, "network_evaluations": evaluations,
           "compile_s": timing["compile_s"], "batch_size": batch_size,
           "seconds_per_sample": timing["best_s"] / batch_size,
           "median_seconds_per_sample": timing["median_s"] / batch_size,
           "samples_per_s": batch_size / timing["best_s"]}
    if family == "surrogate":
      row["t_mid"] = overrides["t_mid"]
    if quality:
      row["digits_fd"] = _quality(compiled, params, config.bench.quality_samples,
                                  batch_size)
    rows.append(row)
    logging.info("%s: %.5f s/sample, %d evaluations", label, row["seconds_per_sample"], evaluations)
  baseline = rows[0]["seconds_per_sample"]
  for row in rows:
    row["speedup_vs_ddpm"] = baseline / row["seconds_per_sample"]
  results = {"device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
             "checkpoint_step": step, "num_timesteps": T, "rows": rows}
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "bench_samplers.json"), "w") as f:
    json.dump(results, f, indent=2)
  print_table(results)
  return results


def print_table(results: dict) -> None:
  rows = results["rows"]
  has_fd = any("digits_fd" in row for row in rows)
  print(f"device: {results['device']} x{results['num_devices']}; params: "
        f"{'step ' + str(results['checkpoint_step']) if results['checkpoint_step'] else 'random'}")
  print(f"{'sampler':<38}{'NFE':>6}{'s/sample':>11}{'samples/s':>11}{'x DDPM':>8}{'compile s':>11}"
        + (f"{'digits FD':>11}" if has_fd else ""))
  for row in rows:
    print(f"{row['sampler']:<38}{row['network_evaluations']:>6}{row['seconds_per_sample']:>11.5f}"
          f"{row['samples_per_s']:>11.1f}{row['speedup_vs_ddpm']:>8.1f}{row['compile_s']:>11.2f}"
          + (f"{row.get('digits_fd', float('nan')):>11.3f}" if has_fd else ""))
