"""--mode=bench with config.bench.kind='precision': bf16 compute and rematerialisation.

For each of {float32, bfloat16} x {remat off, on} (model.dtype, model.remat), the full train
step at config.training.batch_size (the config's objective, depth scheme and optimizer):
  compile_s:      lowering + XLA compile of the train step;
  images_per_s:   batch_size / best of config.bench.num_iters timed steps after one warm-up
                  (the state threaded through, as in training; the median is recorded too);
  temp/argument/output bytes: XLA's compiled memory_analysis() of the train step. Temp bytes
                  (activations kept for the backward pass, workspace) are what remat and bf16
                  shrink; arguments are the train state and the batch (float32 params, EMA and
                  Adam moments: the same under both dtypes); the output aliases the donated state;
  residual_bytes: what JAX's autodiff saves from the U-Net forward for the backward pass (the
                  residuals of jax.vjp of the network at the batch size, full depth, params
                  included): backend-independent, and where remat's saving shows before any
                  compiler scheduling (the CPU backend's temp bytes may not show it);
  device_peak_bytes: peak_bytes_in_use from device.memory_stats() where the backend reports it
                  (GPU, TPU). That peak only grows in a process, so with such a backend each
                  variant runs in a fresh subprocess; the CPU backend reports none ("n/a").
  first_loss:     the loss of the first step (the same batch and rng for every variant).
Writes <workdir>/bench_precision.json and prints a table.

  python -m jdiff.main --config=configs/quickstart.py --workdir=/tmp/bp --mode=bench \\
      --config.bench.kind=precision
"""

import json
import os
import pickle
import subprocess
import sys
import tempfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import builders
from jdiff import parallel
from jdiff.drivers import train as train_lib
from jdiff.tools import report
from jdiff.tools import timing

VARIANTS = (("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True))
BASELINE = ("float32", False)
# The repository root: where the subprocess of one variant imports jdiff from.
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _variant_name(dtype: str, remat: bool) -> str:
  return f"{dtype}/remat={'on' if remat else 'off'}"


def residual_bytes(model, params, batch_size: int, image_shape) -> int:
  """Bytes of the residuals jax.vjp keeps from the U-Net forward (train mode) for the backward."""
  x = jnp.zeros((batch_size,) + tuple(image_shape), jnp.float32)
  t = jnp.zeros((batch_size,), jnp.float32)
  rngs = {"dropout": jax.random.key(0)}
  loss = lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x, t, train=True, rngs=rngs)))
  residuals = jax.tree.leaves(jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params))
  return int(sum(r.size * jnp.dtype(r.dtype).itemsize for r in residuals
                 if jnp.issubdtype(r.dtype, jnp.number)))


def bench_variant(config, dtype: str, remat: bool) -> dict:
  """Compiles and times the train step of config with model.dtype=dtype, model.remat=remat."""
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  config.model.remat = remat
  mesh = parallel.make_mesh()
  model, state, train_step = train_lib.build_fresh_training(config, mesh)
  batch_size = config.training.batch_size
  shape = builders.image_shape(config)
  rng = np.random.default_rng(0)
  images = parallel.global_batch_from_local(
      rng.integers(0, 256, (batch_size // jax.process_count(),) + shape, dtype=np.uint8), mesh)

  stats, compiled = timing.compile_only(train_step, (state, images))
  stats["residual_bytes"] = residual_bytes(model, state.params, batch_size, shape)
  stats.update(timing.compiled_memory_bytes(compiled))

  # The step donates its state: thread it through the compiled executable (no second compile);
  # the first call is a warm-up.
  times, state, metrics = timing.run_threaded(compiled, state, lambda i: (images,),
                                              config.bench.num_iters + 1, warmup=1)
  param_dtypes = sorted({str(x.dtype) for x in jax.tree.leaves((state.params, state.opt_state))
                         if jnp.issubdtype(x.dtype, jnp.floating)})
  stats.update(
      dtype=dtype, remat=remat, batch_size=batch_size, num_iters=config.bench.num_iters,
      best_s=times["best_s"], median_s=times["median_s"],
      images_per_s=batch_size / times["best_s"], first_loss=float(metrics[0]["loss"]),
      state_float_dtypes=param_dtypes, device_peak_bytes=timing.device_peak_bytes())
  return stats


def _bench_variant_in_subprocess(config, dtype: str, remat: bool) -> dict:
  """bench_variant in a fresh process, so that the device's peak memory is this variant's own."""
  with tempfile.TemporaryDirectory() as tmp:
    config_path, result_path = os.path.join(tmp, "config.pkl"), os.path.join(tmp, "result.json")
    with open(config_path, "wb") as f:
      pickle.dump(config, f)
    command = [sys.executable, "-m", "jdiff.tools.bench_precision", config_path, dtype,
               str(int(remat)), result_path]
    result = subprocess.run(command, cwd=_REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"precision bench variant {_variant_name(dtype, remat)} failed:\n"
                         f"{result.stderr[-3000:]}")
    with open(result_path) as f:
      return json.load(f)


def print_table(results: dict) -> str:
  base = results["variants"][_variant_name(*BASELINE)]

  def ratio(key):
    return lambda r: r[key] / base[key] if base[key] else float("nan")

  def mib(key):
    return lambda r: None if r[key] is None else r[key] / 2**20

  times = lambda value: f"{value:.2f}x"
  rows = [dict(r, variant=name) for name, r in results["variants"].items()]
  return report.print_table(
      rows,
      [report.Column("variant", "variant"), report.Column("compile s", "compile_s", ".2f"),
       report.Column("images/s", "images_per_s", ".1f"),
       report.Column("speed", ratio("images_per_s"), times),
       report.Column("temp MiB", mib("temp_bytes"), ".2f"),
       report.Column("temp", ratio("temp_bytes"), times),
       report.Column("resid MiB", mib("residual_bytes"), ".2f"),
       report.Column("resid", ratio("residual_bytes"), times),
       report.Column("args MiB", mib("argument_bytes"), ".2f"),
       report.Column("out MiB", mib("output_bytes"), ".2f"),
       report.Column("peak MiB", mib("device_peak_bytes"), ".1f"),
       report.Column("first loss", "first_loss", ".5f")],
      title=(f"device: {results['device']} x{results['num_devices']}, train step at batch "
             f"{results['batch_size']}, best of {results['num_iters']} steps after a warm-up"),
      notes=["speed, temp, resid: relative to float32/remat=off. temp: XLA's temp bytes of the "
             "compiled train step; resid: what autodiff keeps from the U-Net forward for the "
             "backward pass"] + ([results["device_peak_note"]] if results["device_peak_note"]
                                 else []))


def run(config, workdir: str, isolate: Optional[bool] = None) -> dict:
  """Benchmarks the four variants; writes <workdir>/bench_precision.json; returns the results.

  isolate: run each variant in its own subprocess (None: where the device reports peak memory,
  which a single process cannot reset between variants; never with several processes).
  """
  has_memory_stats = timing.device_memory_stats() is not None
  if isolate is None:
    isolate = has_memory_stats and jax.process_count() == 1
  results = {
      "device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
      "batch_size": config.training.batch_size, "num_iters": config.bench.num_iters,
      "image_shape": list(builders.image_shape(config)), "isolated": bool(isolate),
      "device_peak_note": None if has_memory_stats else (
          f"device peak memory: unavailable (the {jax.default_backend()} backend reports no "
          "memory_stats); see XLA's temp/argument/output bytes"),
      "variants": {},
  }
  for dtype, remat in VARIANTS:
    bench_fn = _bench_variant_in_subprocess if isolate else bench_variant
    results["variants"][_variant_name(dtype, remat)] = bench_fn(config, dtype, remat)
  report.write_json(os.path.join(workdir, "bench_precision.json"), results)
  print_table(results)
  return results


if __name__ == "__main__":
  # One variant in this process:
  #   python -m jdiff.tools.bench_precision CONFIG.pkl DTYPE REMAT OUT.json
  _config_path, _dtype, _remat, _result_path = sys.argv[1:5]
  with open(_config_path, "rb") as _f:
    _config = pickle.load(_f)
  report.write_json(_result_path, bench_variant(_config, _dtype, bool(int(_remat))),
                    announce=False)
