"""--mode=bench: U-Net forward and train-step throughput, sampler speed, compile times, memory, FLOPs.

config.bench.kind selects the benchmark: 'core' (here: writes <workdir>/bench.json and prints a
table), 'depth' (jdiff.tools.bench_depth), 'samplers' (jdiff.tools.bench_samplers) or
'precision' (jdiff.tools.bench_precision, bf16 x remat). Benchmarks are measurements, not tests;
the timers are jdiff.tools.timing's, the JSON and tables jdiff.tools.report's.

  python -m jdiff.main --config=configs/quickstart.py --workdir=/tmp/bench --mode=bench
  python -m jdiff.main --config=configs/quickstart.py:tiny --workdir=/tmp/bench --mode=bench \\
      --config.bench.kind=samplers
"""

import os
import platform

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import builders
from jdiff import compute as compute_lib
from jdiff import diffusion as diffusion_lib
from jdiff import files
from jdiff import parallel
from jdiff import sampling
from jdiff.drivers import train as train_lib
from jdiff.tools import bench_depth
from jdiff.tools import bench_precision
from jdiff.tools import bench_samplers
from jdiff.tools import report
from jdiff.tools import timing


def bench_core(config) -> dict:
  mesh = parallel.make_mesh()
  compute = compute_lib.for_backend(config)
  model = builders.build_model(config, compute)
  diffusion = builders.build_diffusion(config)
  optimizer = builders.build_optimizer(config.training, compute)
  state = builders.build_state(config, model, optimizer, mesh)
  shape = builders.image_shape(config)
  num_iters = config.bench.num_iters
  rng = np.random.default_rng(0)
  results = {"forward": {}, "device": str(jax.devices()[0].device_kind),
             "num_devices": jax.device_count(), "host": platform.node()}

  forward = compute.jit(lambda params, x, t: builders.make_model_fn(model, params)(x, t))
  for batch_size in config.bench.batch_sizes:
    x = jnp.asarray(rng.standard_normal((batch_size,) + shape), jnp.float32)
    t = jnp.asarray(rng.integers(0, config.diffusion.num_timesteps, batch_size), jnp.float32)
    stats = timing.compile_and_time(forward, (state.params, x, t), num_iters)
    stats["images_per_s"] = batch_size / stats["best_s"]
    stats["flops_per_image"] = stats["flops"] / batch_size
    stats["achieved_flops_per_s"] = stats["flops"] / stats["best_s"]
    results["forward"][str(batch_size)] = stats

  train_step = train_lib.make_train_step(config, model, diffusion, optimizer, mesh, compute)
  batch_size = config.training.batch_size
  images = parallel.global_batch_from_local(
      rng.integers(0, 256, (batch_size // jax.process_count(),) + shape, dtype=np.uint8), mesh)
  # The train step donates its state: compile it for cost, then thread a copy of the state
  # through the compiled executable (the first call a warm-up).
  stats, compiled = timing.compile_only(train_step, (state, images))
  times, _, _ = timing.run_threaded(compiled, jax.tree.map(jnp.copy, state), lambda i: (images,),
                                    num_iters + 1, warmup=1)
  stats.update(best_s=times["best_s"], median_s=times["median_s"], batch_size=batch_size,
               images_per_s=batch_size / times["best_s"])
  stats["achieved_flops_per_s"] = stats["flops"] / stats["best_s"]
  results["train_step"] = stats

  num_steps = config.bench.sampler_steps or config.diffusion.num_timesteps
  timing_diffusion = diffusion_lib.GaussianDiffusion.from_betas(
      np.asarray(diffusion.betas, np.float64)[:num_steps])
  sample_batch = config.sampling.batch_size
  sample_fn = builders.make_sample_fn(
      lambda model_fn, x_T, key: sampling.ancestral_sample(
          model_fn, timing_diffusion, x_T, key, variance_type=config.diffusion.variance_type),
      model, mesh, shape, sample_batch)
  stats = timing.compile_and_time(sample_fn, (state.ema_params, jax.random.key(0)), 1)
  stats.update(
      batch_size=sample_batch, steps_timed=num_steps,
      steps_per_sample=config.diffusion.num_timesteps,
      seconds_per_step=stats["best_s"] / num_steps,
      # Exact when steps_timed == steps_per_sample; otherwise scaled by the step count.
      seconds_per_sample=stats["best_s"] / sample_batch * config.diffusion.num_timesteps / num_steps)
  results["sampler"] = stats
  results["memory"] = timing.peak_memory_bytes()
  return results


def _mib(value) -> str:
  return "n/a" if value is None else f"{value / 2**20:.1f} MiB"


def print_core_table(results: dict) -> str:
  rows = [dict(r, what="U-Net forward", batch_size=int(batch_size))
          for batch_size, r in results["forward"].items()]
  train_step = results["train_step"]
  rows.append(dict(train_step, what="train step",
                   flops_per_image=train_step["flops"] / train_step["batch_size"]))
  r, m = results["sampler"], results["memory"]
  return report.print_table(
      rows,
      [report.Column("what", "what"), report.Column("batch", "batch_size"),
       report.Column("images/s", "images_per_s", ".1f"),
       report.Column("best s", "best_s", ".4f"), report.Column("median s", "median_s", ".4f"),
       report.Column("compile s", "compile_s", ".2f"),
       report.Column("GFLOP/img", lambda row: row["flops_per_image"] / 1e9, ".3f"),
       report.Column("GFLOP/s", lambda row: row["achieved_flops_per_s"] / 1e9, ".1f"),
       report.Column("temp MiB", lambda row: row["temp_bytes"] / 2**20, ".2f")],
      title=f"device: {results['device']} x{results['num_devices']} ({results['host']})",
      notes=[f"sampler: {r['seconds_per_sample']:.4f} s/sample ({r['steps_per_sample']} steps, "
             f"batch {r['batch_size']}, {r['steps_timed']} steps timed, "
             f"{r['seconds_per_step']:.5f} s/step), compile {r['compile_s']:.2f} s",
             f"memory: device peak {_mib(m['device_peak_bytes'])}, "
             f"host max RSS {_mib(m['host_max_rss_bytes'])}"])


def run_core(config, workdir: str) -> dict:
  """The core benchmark: writes <workdir>/bench.json, prints the table, returns the results."""
  results = bench_core(config)
  report.write_json(os.path.join(workdir, "bench.json"), results)
  print_core_table(results)
  return results


RUNNERS = {
    "core": run_core,
    "depth": bench_depth.run,
    "samplers": bench_samplers.run,
    "precision": bench_precision.run,
}


def run(config, workdir: str) -> dict:
  """Runs the benchmark config.bench.kind names; returns its results (also written as JSON)."""
  kind = config.bench.kind
  if kind not in RUNNERS:
    raise ValueError(f"config.bench.kind={kind!r}: must be one of {sorted(RUNNERS)}")
  if jax.process_index() == 0:
    files.check_writable(workdir, "benchmark results")  # before minutes of timing, not after
  return RUNNERS[kind](config, workdir)
