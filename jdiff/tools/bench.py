"""--mode=bench: U-Net forward and train-step throughput, sampler speed, compile times, memory, FLOPs.

Writes <workdir>/bench.json and prints a table. Benchmarks are measurements, not tests.
config.bench.kind selects the core benchmark here, or the adaptive-depth / sampler / precision
(bf16 x remat) ones.
"""

import json
import os
import platform
import resource
import time
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import diffusion as diffusion_lib
from jdiff import parallel
from jdiff import sampling
from jdiff import train as train_lib
from jdiff.models import build_model


def compile_only(jitted: Callable, args):
  """Compile time, XLA's FLOP count and temporary memory of jitted(*args); returns (stats, compiled)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older JAX returned one dict per device program
    cost = cost[0] if cost else {}
  memory = compiled.memory_analysis()
  stats = {
      "compile_s": compile_s,
      "flops": float(cost.get("flops", float("nan"))),
      "temp_bytes": int(getattr(memory, "temp_size_in_bytes", 0) or 0),
  }
  return stats, compiled


def compile_and_run(jitted: Callable, args, num_iters: int):
  """(compile_only's stats plus the best and median of num_iters timed calls after a warm-up,
  the compiled function, the warm-up call's output)."""
  stats, compiled = compile_only(jitted, args)
  output = jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(num_iters):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return dict(stats, best_s=float(np.min(times)), median_s=float(np.median(times))), compiled, output


def compile_and_time(jitted: Callable, args, num_iters: int) -> Dict[str, float]:
  """compile_and_run's stats."""
  return compile_and_run(jitted, args, num_iters)[0]


def peak_memory_bytes() -> Dict[str, int]:
  stats = jax.devices()[0].memory_stats() or {}
  return {
      "device_peak_bytes": int(stats.get("peak_bytes_in_use", 0)),
      "host_max_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
  }


def bench_core(config) -> dict:
  mesh = parallel.make_mesh()
  model = build_model(config)
  diffusion = train_lib.build_diffusion(config)
  optimizer = train_lib.make_optimizer(config.training)
  state = train_lib.init_state(config, model, optimizer, mesh)
  shape = train_lib.image_shape(config)
  num_iters = config.bench.num_iters
  rng = np.random.default_rng(0)
  results = {"forward": {}, "device": str(jax.devices()[0].device_kind),
             "num_devices": jax.device_count(), "host": platform.node()}

  forward = jax.jit(lambda params, x, t: model.apply({"params": params}, x, t))
  for batch_size in config.bench.batch_sizes:
    x = jnp.asarray(rng.standard_normal((batch_size,) + shape), jnp.float32)
    t = jnp.asarray(rng.integers(0, config.diffusion.num_timesteps, batch_size), jnp.float32)
    timing = compile_and_time(forward, (state.params, x, t), num_iters)
    timing["images_per_s"] = batch_size / timing["best_s"]
    timing["flops_per_image"] = timing["flops"] / batch_size
    timing["achieved_flops_per_s"] = timing["flops"] / timing["best_s"]
    results["forward"][str(batch_size)] = timing

  train_step = train_lib.make_train_step(config, model, diffusion, optimizer, mesh)
  batch_size = config.training.batch_size
  images = parallel.global_batch_from_local(
      rng.integers(0, 256, (batch_size // jax.process_count(),) + shape, dtype=np.uint8), mesh)
  # The train step donates its state: compile it for cost and time, then thread the state.
  timing, _ = compile_only(train_step, (state, images))
  current = jax.tree.map(jnp.copy, state)
  step_times = []
  for _ in range(num_iters + 1):  # the first call is a warm-up
    start = time.perf_counter()
    current, metrics = train_step(current, images)
    jax.block_until_ready(metrics)
    step_times.append(time.perf_counter() - start)
  step_times = step_times[1:]
  timing.update(best_s=float(np.min(step_times)), median_s=float(np.median(step_times)),
                batch_size=batch_size, images_per_s=batch_size / float(np.min(step_times)))
  timing["achieved_flops_per_s"] = timing["flops"] / timing["best_s"]
  results["train_step"] = timing

  num_steps = config.bench.sampler_steps or config.diffusion.num_timesteps
  timing_diffusion = diffusion_lib.GaussianDiffusion.from_betas(
      np.asarray(diffusion.betas, np.float64)[:num_steps])
  sample_batch = config.sampling.batch_size
  sample_fn = sampling.make_sample_fn(
      lambda model_fn, x_T, key: sampling.ancestral_sample(
          model_fn, timing_diffusion, x_T, key, variance_type=config.diffusion.variance_type),
      lambda params: train_lib.make_model_fn(model, params), mesh, shape, sample_batch)
  timing = compile_and_time(sample_fn, (state.ema_params, jax.random.key(0)), 1)
  timing.update(
      batch_size=sample_batch, steps_timed=num_steps,
      steps_per_sample=config.diffusion.num_timesteps,
      seconds_per_step=timing["best_s"] / num_steps,
      # Exact when steps_timed == steps_per_sample; otherwise scaled by the step count.
      seconds_per_sample=timing["best_s"] / sample_batch * config.diffusion.num_timesteps / num_steps)
  results["sampler"] = timing
  results["memory"] = peak_memory_bytes()
  return results


def print_core_table(results: dict) -> None:
  print(f"device: {results['device']} x{results['num_devices']}")
  print(f"{'what':<22}{'batch':>7}{'images/s':>12}{'compile s':>11}{'GFLOP/img':>11}{'GFLOP/s':>10}")
  for batch_size, r in results["forward"].items():
    print(f"{'U-Net forward':<22}{batch_size:>7}{r['images_per_s']:>12.1f}{r['compile_s']:>11.2f}"
          f"{r['flops_per_image'] / 1e9:>11.3f}{r['achieved_flops_per_s'] / 1e9:>10.1f}")
  r = results["train_step"]
  print(f"{'train step':<22}{r['batch_size']:>7}{r['images_per_s']:>12.1f}{r['compile_s']:>11.2f}"
        f"{r['flops'] / r['batch_size'] / 1e9:>11.3f}{r['achieved_flops_per_s'] / 1e9:>10.1f}")
  r = results["sampler"]
  print(f"sampler: {r['seconds_per_sample']:.4f} s/sample ({r['steps_per_sample']} steps, "
        f"batch {r['batch_size']}, {r['steps_timed']} steps timed), compile {r['compile_s']:.2f} s")
  m = results["memory"]
  print(f"memory: device peak {m['device_peak_bytes'] / 2**20:.1f} MiB, "
        f"host max RSS {m['host_max_rss_bytes'] / 2**20:.1f} MiB")


def run(config, workdir: str) -> dict:
  kind = config.bench.kind
  if kind == "core":
    results = bench_core(config)
    print_core_table(results)
    name = "bench.json"
  elif kind == "depth":
    from jdiff import bench_depth  # pylint: disable=g-import-not-at-top
    return bench_depth.run(config, workdir)
  elif kind == "precision":
    from jdiff import bench_precision  # pylint: disable=g-import-not-at-top
    return bench_precision.run(config, workdir)
  else:
    from jdiff import bench_samplers  # pylint: disable=g-import-not-at-top
    return bench_samplers.run(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  with open(path, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {path}")
  return results
