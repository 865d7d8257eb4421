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
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import bench
from jdiff import parallel
from jdiff import train as train_lib
from jdiff.models import build_model

VARIANTS = (("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True))


def _variant_name(dtype: str, remat: bool) -> str:
  return f"{dtype}/remat={'on' if remat else 'off'}"


def device_memory_stats() -> Optional[dict]:
  """device.memory_stats() of the first local device, or None where the backend has none (CPU)."""
  try:
    return jax.local_devices()[0].memory_stats() or None
  except Exception:  # pylint: disable=broad-except  # some backends raise instead of None
    return None


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
  model = build_model(config)
  diffusion = train_lib.build_diffusion(config)
  optimizer = train_lib.make_optimizer(config.training)
  state = train_lib.init_state(config, model, optimizer, mesh)
  batch_size = config.training.batch_size
  shape = train_lib.image_shape(config)
  rng = np.random.default_rng(0)
  images = parallel.global_batch_from_local(
      rng.integers(0, 256, (batch_size // jax.process_count(),) + shape, dtype=np.uint8), mesh)
  train_step = train_lib.make_train_step(config, model, diffusion, optimizer, mesh)

  stats, compiled = bench.compile_only(train_step, (state, images))
  stats["residual_bytes"] = residual_bytes(model, state.params, batch_size, shape)
  memory = compiled.memory_analysis()
  for field in ("argument", "output", "alias", "temp", "generated_code"):
    stats[f"{field}_bytes"] = int(getattr(memory, f"{field}_size_in_bytes", 0) or 0)

  # The step donates its state: thread it, calling the compiled executable (no second compile).
  times = []
  first_loss = None
  for _ in range(config.bench.num_iters + 1):  # the first call is a warm-up
    start = time.perf_counter()
    state, metrics = compiled(state, images)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    if first_loss is None:
      first_loss = float(metrics["loss"])
  times = times[1:]
  param_dtypes = sorted({str(x.dtype) for x in jax.tree.leaves((state.params, state.opt_state))
                         if jnp.issubdtype(x.dtype, jnp.floating)})
  memory_stats = device_memory_stats()
  stats.update(
      dtype=dtype, remat=remat, batch_size=batch_size, num_iters=config.bench.num_iters,
      best_s=float(np.min(times)), median_s=float(np.median(times)),
      images_per_s=batch_size / float(np.min(times)), first_loss=first_loss,
      state_float_dtypes=param_dtypes,
      device_peak_bytes=(int(memory_stats["peak_bytes_in_use"])
                         if memory_stats and "peak_bytes_in_use" in memory_stats else None))
  return stats


def _bench_variant_in_subprocess(config, dtype: str, remat: bool) -> dict:
  """bench_variant in a fresh process, so that the device's peak memory is this variant's own."""
  with tempfile.TemporaryDirectory() as tmp:
    config_path, result_path = os.path.join(tmp, "config.pkl"), os.path.join(tmp, "result.json")
    with open(config_path, "wb") as f:
      pickle.dump(config, f)
    command = [sys.executable, "-m", "jdiff.bench_precision", config_path, dtype, str(int(remat)),
               result_path]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"precision bench variant {_variant_name(dtype, remat)} failed:\n"
                         f"{result.stderr[-3000:]}")
    with open(result_path) as f:
      return json.load(f)


def print_table(results: dict) -> None:
  base = results["variants"][_variant_name("float32", False)]
  print(f"device: {results['device']} x{results['num_devices']}, train step at batch "
        f"{results['batch_size']}, best of {results['num_iters']} steps after a warm-up")
  print(f"{'variant':<21}{'compile s':>10}{'images/s':>10}{'speed':>7}{'temp MiB':>10}"
        f"{'temp':>7}{'resid MiB':>10}{'resid':>7}{'args MiB':>10}{'out MiB':>9}{'peak MiB':>10}"
        f"{'first loss':>12}")
  for name, r in results["variants"].items():
    peak = r["device_peak_bytes"]
    peak_text = f"{peak / 2**20:>10.1f}" if peak is not None else f"{'n/a':>10}"
    ratio = lambda key, r=r: r[key] / base[key] if base[key] else float("nan")
    print(f"{name:<21}{r['compile_s']:>10.2f}{r['images_per_s']:>10.1f}"
          f"{ratio('images_per_s'):>6.2f}x{r['temp_bytes'] / 2**20:>10.2f}{ratio('temp_bytes'):>6.2f}x"
          f"{r['residual_bytes'] / 2**20:>10.2f}{ratio('residual_bytes'):>6.2f}x"
          f"{r['argument_bytes'] / 2**20:>10.2f}{r['output_bytes'] / 2**20:>9.2f}"
          f"{peak_text}{r['first_loss']:>12.5f}")
  print("speed, temp, resid: relative to float32/remat=off. temp: XLA's temp bytes of the compiled "
        "train step; resid: what autodiff keeps from the U-Net forward for the backward pass")
  if results["device_peak_note"]:
    print(results["device_peak_note"])


def run(config, workdir: str, isolate: Optional[bool] = None) -> dict:
  """Benchmarks the four variants; writes <workdir>/bench_precision.json; returns the results.

  isolate: run each variant in its own subprocess (None: where the device reports peak memory,
  which a single process cannot reset between variants; never with several processes).
  """
  has_memory_stats = device_memory_stats() is not None
  if isolate is None:
    isolate = has_memory_stats and jax.process_count() == 1
  results = {
      "device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
      "batch_size": config.training.batch_size, "num_iters": config.bench.num_iters,
      "image_shape": list(train_lib.image_shape(config)), "isolated": bool(isolate),
      "device_peak_note": None if has_memory_stats else (
          f"device peak memory: unavailable (the {jax.default_backend()} backend reports no "
          "memory_stats); see XLA's temp/argument/output bytes"),
      "variants": {},
  }
  for dtype, remat in VARIANTS:
    bench_fn = _bench_variant_in_subprocess if isolate else bench_variant
    results["variants"][_variant_name(dtype, remat)] = bench_fn(config, dtype, remat)
  print_table(results)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "bench_precision.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {path}")
  return results


if __name__ == "__main__":
  # One variant in this process: python -m jdiff.bench_precision CONFIG.pkl DTYPE REMAT OUT.json
  _config_path, _dtype, _remat, _result_path = sys.argv[1:5]
  with open(_config_path, "rb") as _f:
    _config = pickle.load(_f)
  with open(_result_path, "w") as _f:
    json.dump(bench_variant(_config, _dtype, bool(int(_remat))), _f)
