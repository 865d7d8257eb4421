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
c = 2. Writes <workdir>/bench_depth.json and prints a table shaped like the paper's Table 2.

  python -m jdiff.main --config=configs/quickstart_adaptive.py --workdir=workdirs/bench_depth \
      --mode=bench --config.bench.kind=depth
"""

import json
import os
import time
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import bench
from jdiff import depth as depth_lib
from jdiff import sampling
from jdiff import train as train_lib
from jdiff.models import build_model
from jdiff.models.unet import SKIP_TYPES

POWERS = (0, 1, 2, 3, 5)
# The configuration the dispatch comparison times (the paper's choice).
DISPATCH_SKIP_TYPE, DISPATCH_POWER = "zero", 2


def best_times(jitted: Dict[str, Callable], args, num_iters: int) -> Dict[str, float]:
  """Best of num_iters timed calls of each function after a warm-up, interleaved round by round
  so that load from other processes on a shared machine falls on all of them alike."""
  for fn in jitted.values():
    jax.block_until_ready(fn(*args))  # compile and warm up
  times = {name: [] for name in jitted}
  for _ in range(num_iters):
    for name, fn in jitted.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: float(np.min(t)) for name, t in times.items()}


def forward_flops_per_depth(model, params, x, t) -> list:
  """XLA's FLOP count of one U-Net forward at each static depth k."""
  flops = []
  for k in range(model.num_levels):
    forward = jax.jit(lambda params, x, t, k=k: model.apply({"params": params}, x, t,
                                                             shortcut_depth=k))
    stats, _ = bench.compile_only(forward, (params, x, t))
    flops.append(stats["flops"])
  return flops


def make_sampler(config, model, diffusion, schedule, batch_size) -> Callable:
  """Jitted (params, rng) -> images: the ancestral sampler at k(t), as --mode=sample runs it."""
  shape = train_lib.image_shape(config)

  @jax.jit
  def sample(params, rng):
    x_T = jax.random.normal(rng, (batch_size,) + shape)
    return sampling.ancestral_sample(
        depth_lib.depth_model_fn(model, params), diffusion, x_T, rng,
        variance_type=config.diffusion.variance_type,
        clip_denoised=config.sampling.clip_denoised, depth_schedule=schedule)
  return sample


def make_dispatch_samplers(config, model, diffusion, schedule, batch_size) -> Dict[str, Callable]:
  """The same ancestral plan run with each dispatch: 'switch' (sampling.run_plan: one scan,
  lax.switch per step) and 'segments' (depth.scan_by_depth: one scan per depth, k static)."""
  shape = train_lib.image_shape(config)
  plan = sampling.ancestral_plan(diffusion, variance_type=config.diffusion.variance_type,
                                 clip_denoised=config.sampling.clip_denoised,
                                 depth_schedule=schedule)

  def segments(model_fn, x_T, rng):
    return depth_lib.scan_by_depth(lambda x, row: plan.step(model_fn, x, row, rng), x_T,
                                   plan.table)

  def make(run):
    @jax.jit
    def sample(params, rng):
      x_T = jax.random.normal(rng, (batch_size,) + shape)
      return run(depth_lib.depth_model_fn(model, params), x_T, rng)
    return sample

  return {"switch": make(lambda model_fn, x_T, rng: sampling.run_plan(plan, model_fn, x_T, rng)),
          "segments": make(segments)}


def run(config, workdir: str) -> dict:
  """Measures every skip type x c; writes <workdir>/bench_depth.json; returns the results."""
  num_timesteps = config.diffusion.num_timesteps
  batch_size = config.sampling.batch_size
  num_iters = config.bench.num_iters
  diffusion = train_lib.build_diffusion(config)
  shape = train_lib.image_shape(config)
  x = jnp.zeros((batch_size,) + shape, jnp.float32)
  t = jnp.zeros((batch_size,), jnp.float32)
  results = {"device": str(jax.devices()[0].device_kind), "num_timesteps": num_timesteps,
             "batch_size": batch_size, "num_iters": num_iters, "skip_types": {}}

  for skip_type in SKIP_TYPES:
    skip_config = config.copy_and_resolve_references()
    skip_config.model.skip_type = skip_type
    model = build_model(skip_config)
    params = train_lib.init_params(model, skip_config, jax.random.key(config.seed))
    per_depth = forward_flops_per_depth(model, params, x, t)
    schedules = {str(power): depth_lib.depth_schedule(model.num_levels, power, num_timesteps)
                 for power in POWERS}
    seconds = best_times(
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
          **best_times(samplers, (params, jax.random.key(0)), num_iters)}

  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "bench_depth.json"), "w") as f:
    json.dump(results, f, indent=2)
  print_table(results)
  return results


def print_table(results: dict) -> None:
  """Table 2 of the paper: rows skip types, columns c; each cell time saved / FLOPs saved."""
  print(f"device: {results['device']}, T={results['num_timesteps']}, "
        f"batch {results['batch_size']}: time saved / FLOP-count saved against c = 0")
  print(f"{'skip type':<13}" + "".join(f"{f'c = {power}':>17}" for power in POWERS))
  for skip_type, entry in results["skip_types"].items():
    cells = [f"{row['time_saved']:>7.1%} / {row['flops_saved']:>6.1%}"
             for row in entry["powers"].values()]
    print(f"{skip_type:<13}" + "".join(f"{cell:>17}" for cell in cells))
  dispatch = results["dispatch"]
  print(f"dispatch ({dispatch['skip_type']}, c = {dispatch['power']}): one scan with lax.switch "
        f"{dispatch['switch']:.3f} s, one scan per depth segment {dispatch['segments']:.3f} s")
