"""--mode=bench with config.bench.kind='depth': adaptive-depth sampling, FLOPs and time saved.

For each skip type and c in {0, 1, 2, 3, 5}, with the ancestral sampler over all T steps:
  flops:  FLOPs of one sampling run = sum over steps of the U-Net forward's FLOPs at k(t).
          XLA's cost analysis counts a while loop's body once (not times its trip count) and a
          lax.switch as its costliest branch, so the sampler's own count says nothing about the
          saving; instead the forward is compiled at each static depth and those counts summed.
  time:   best of config.bench.num_iters timed sampling runs (after a warm-up) of the jitted
          sampler with the depth schedule (one scan, lax.switch per step), all in one process,
          the runs of the five c values interleaved.
  saved:  1 - value / value at c = 0 for the same skip type, for time and for FLOPs.
Also times the alternative dispatch (one lax.scan per depth segment, static k) for zero skip at
c = 2. Writes <workdir>/bench_depth.json and prints a table shaped like the paper's Table 2
(and the seconds behind it).

  python -m jdiff.main --config=configs/quickstart_adaptive.py --workdir=workdirs/bench_depth \\
      --mode=bench --config.bench.kind=depth
"""

import os
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import builders
from jdiff import depth as depth_lib
from jdiff import sampling
from jdiff.models.unet import SKIP_TYPES
from jdiff.tools import report
from jdiff.tools import timing

POWERS = (0, 1, 2, 3, 5)
# The configuration the dispatch comparison times (the paper's choice).
DISPATCH_SKIP_TYPE, DISPATCH_POWER = "zero", 2


def forward_flops_per_depth(model, params, x, t) -> list:
  """XLA's FLOP count of one U-Net forward at each static depth k."""
  flops = []
  for k in range(model.num_levels):
    forward = jax.jit(lambda params, x, t, k=k: builders.make_model_fn(model, params)(x, t, depth=k))
    stats, _ = timing.compile_only(forward, (params, x, t))
    flops.append(stats["flops"])
  return flops


def make_sampler(config, model, diffusion, schedule, batch_size) -> Callable:
  """Jitted (params, rng) -> images: the ancestral sampler at k(t), as --mode=sample runs it."""
  shape = builders.image_shape(config)

  @jax.jit
  def sample(params, rng):
    x_T = jax.random.normal(rng, (batch_size,) + shape)
    return sampling.ancestral_sample(
        builders.make_model_fn(model, params), diffusion, x_T, rng,
        variance_type=config.diffusion.variance_type,
        clip_denoised=builders.clip_x0(config, "ancestral"), depth_schedule=schedule)
  return sample


def make_dispatch_samplers(config, model, diffusion, schedule, batch_size) -> Dict[str, Callable]:
  """The same ancestral plan run with each dispatch: 'switch' (sampling.run_plan: one scan,
  lax.switch per step) and 'segments' (depth.scan_by_depth: one scan per depth, k static)."""
  shape = builders.image_shape(config)
  plan = sampling.ancestral_plan(diffusion, variance_type=config.diffusion.variance_type,
                                 clip_denoised=builders.clip_x0(config, "ancestral"),
                                 depth_schedule=schedule)

  def segments(model_fn, x_T, rng):
    return depth_lib.scan_by_depth(lambda x, row: plan.step(model_fn, x, row, rng), x_T,
                                   plan.table)

  def make(run):
    @jax.jit
    def sample(params, rng):
      x_T = jax.random.normal(rng, (batch_size,) + shape)
      return run(builders.make_model_fn(model, params), x_T, rng)
    return sample

  return {"switch": make(lambda model_fn, x_T, rng: sampling.run_plan(plan, model_fn, x_T, rng)),
          "segments": make(segments)}


def run(config, workdir: str) -> dict:
  """Measures every skip type x c; writes <workdir>/bench_depth.json; returns the results."""
  num_timesteps = config.diffusion.num_timesteps
  batch_size = config.sampling.batch_size
  num_iters = config.bench.num_iters
  diffusion = builders.build_diffusion(config)
  shape = builders.image_shape(config)
  x = jnp.zeros((batch_size,) + shape, jnp.float32)
  t = jnp.zeros((batch_size,), jnp.float32)
  results = {"device": str(jax.devices()[0].device_kind), "num_timesteps": num_timesteps,
             "batch_size": batch_size, "num_iters": num_iters, "skip_types": {}}

  for skip_type in SKIP_TYPES:
    skip_config = config.copy_and_resolve_references()
    skip_config.model.skip_type = skip_type
    model = builders.build_model(skip_config)
    params = builders.init_params(model, skip_config, jax.random.key(config.seed))
    per_depth = forward_flops_per_depth(model, params, x, t)
    schedules = {str(power): depth_lib.depth_schedule(model.num_levels, power, num_timesteps)
                 for power in POWERS}
    seconds = timing.best_times(
        {power: make_sampler(skip_config, model, diffusion, schedule, batch_size)
         for power, schedule in schedules.items()}, (params, jax.random.key(0)), num_iters)
    rows = {power: {"flops": float(sum(per_depth[k] for k in schedule)),
                    "seconds": seconds[power],
                    "steps_per_depth": np.bincount(schedule, minlength=model.num_levels).tolist()}
            for power, schedule in schedules.items()}
    for row in rows.values():
      row["flops_saved"] = 1.0 - row["flops"] / rows["0"]["flops"]
      row["time_saved"] = 1.0 - row["seconds"] / rows["0"]["seconds"]
    results["skip_types"][skip_type] = {"forward_flops_per_depth": per_depth, "powers": rows}

    if skip_type == DISPATCH_SKIP_TYPE:
      schedule = depth_lib.depth_schedule(model.num_levels, DISPATCH_POWER, num_timesteps)
      samplers = make_dispatch_samplers(skip_config, model, diffusion, schedule, batch_size)
      results["dispatch"] = {
          "skip_type": DISPATCH_SKIP_TYPE, "power": DISPATCH_POWER,
          **timing.best_times(samplers, (params, jax.random.key(0)), num_iters)}

  report.write_json(os.path.join(workdir, "bench_depth.json"), results)
  print_table(results)
  return results


def print_table(results: dict) -> str:
  """Table 2 of the paper: rows skip types, columns c; each cell time saved / FLOPs saved; then
  the seconds per sampling run behind the time column."""
  entries = [dict(entry, skip_type=skip_type) for skip_type, entry in results["skip_types"].items()]
  saved = report.print_table(
      entries,
      [report.Column("skip type", "skip_type")] + [
          report.Column(f"c = {power}", lambda e, p=str(power): e["powers"][p],
                        lambda row: f"{row['time_saved']:.1%} / {row['flops_saved']:.1%}")
          for power in POWERS],
      title=(f"device: {results['device']}, T={results['num_timesteps']}, "
             f"batch {results['batch_size']}: time saved / FLOP-count saved against c = 0"))
  dispatch = results["dispatch"]
  seconds = report.print_table(
      entries,
      [report.Column("skip type", "skip_type")] + [
          report.Column(f"c = {power}", lambda e, p=str(power): e["powers"][p]["seconds"], ".3f")
          for power in POWERS],
      title=f"seconds per sampling run (best of {results['num_iters']})",
      notes=[f"dispatch ({dispatch['skip_type']}, c = {dispatch['power']}): one scan with "
             f"lax.switch {dispatch['switch']:.3f} s, one scan per depth segment "
             f"{dispatch['segments']:.3f} s"])
  return saved + "\n" + seconds
