"""Where the Ho net's gradient spends its time on XLA:CPU: per-kind totals of XLA's profile.

  XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true \
      python docs/results/bench_torch_cpu/profile_gradient.py OUT.json [--batch=8] [--steps=2] \
      [--program=gradient|train_step]

`gradient` (default): the gradient of a plain loss (no dropout) of configs/cifar10_ddpm.py's
U-Net, jitted as jdiff jits it. `train_step`: jdiff's whole train step on that config (dropout,
Adam, clipping, EMA; as `--mode=train` compiles it) on random uint8 images. Run under
jax.profiler; the trace's events (one per XLA thunk: fusions, YNNPACK dots and reductions,
copies) are summed per kind and per step over both worker threads, so the totals are thread
time, not wall time, and they overlap. Eigen's convolutions run asynchronously and mostly do not
show up as events: the wall time per step minus what is listed is not their time. Needs
TensorFlow's copy of the xplane protobuf (installed with jdiff).
"""

import collections
import glob
import json
import re
import shutil
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jdiff import builders
from jdiff import config_lib
from jdiff import compute
from jdiff import parallel
from jdiff.drivers import train as train_lib

flags.DEFINE_integer("batch", 8, "images per gradient or train step")
flags.DEFINE_integer("steps", 2, "calls profiled (after one warm-up)")
flags.DEFINE_enum("program", "gradient", ["gradient", "train_step"], "what is profiled")
FLAGS = flags.FLAGS


def _kind(name: str) -> str:
  """The kind of a thunk from its HLO name (fusion names say what they end in)."""
  base = re.sub(r"\.\d+$", "", name)
  if base.startswith("ynn"):
    return "YNNPACK fusions (dots, reductions)"
  if "reduce" in base:
    return "reduction fusions"
  if "copy" in base or "transpose" in base:
    return "copies and transposes"
  if "convolution" in base or "conv_general" in base:
    return "convolutions (those traced)"
  if base.startswith("concatenate"):
    return "concatenations"
  if base.endswith("fusion"):
    return "elementwise fusions"
  return base


def _gradient():
  """A call running one gradient of the plain loss, blocked on."""
  config = config_lib.load_config("configs/cifar10_ddpm.py")
  config.model.dropout = 0.0
  model = builders.build_model(config)
  params = builders.new_params(model, config, 0)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((FLAGS.batch, 32, 32, 3)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 1000, FLAGS.batch), jnp.float32)
  gradient = compute.for_backend(config).jit(jax.grad(
      lambda p: jnp.mean((model.apply({"params": p}, x, t) - x) ** 2)))
  return lambda: jax.block_until_ready(gradient(params))


def _train_step():
  """A call running one of jdiff's train steps (state threaded through), blocked on."""
  config = config_lib.load_config("configs/cifar10_ddpm.py")
  config.training.batch_size = FLAGS.batch
  mesh = parallel.make_mesh()
  _, state, train_step = train_lib.build_fresh_training(config, mesh)
  images = parallel.global_batch_from_local(np.random.default_rng(0).integers(
      0, 256, (FLAGS.batch,) + builders.image_shape(config), dtype=np.uint8), mesh)
  train_step.compile_all(state, images)
  threaded = {"state": state}

  def step():
    threaded["state"], metrics = train_step.compiled(None)(threaded["state"], images)
    jax.block_until_ready(metrics)
  return step


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: profile_gradient.py OUT.json [--batch=N] [--steps=N] "
                         "[--program=gradient|train_step]")
  compute.start()  # as jdiff's --mode runs do
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  step = _train_step() if FLAGS.program == "train_step" else _gradient()
  step()  # compiles, and a warm-up
  trace_dir = tempfile.mkdtemp(prefix="jdiff-profile-")
  jax.profiler.start_trace(trace_dir)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    step()
  wall_s = (time.perf_counter() - start) / FLAGS.steps
  jax.profiler.stop_trace()
  space = xplane_pb2.XSpace()
  with open(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
    space.ParseFromString(f.read())
  shutil.rmtree(trace_dir)  # tens of MB of trace, read
  total_ms, count = collections.Counter(), collections.Counter()
  for plane in space.planes:
    names = {key: meta.name for key, meta in plane.event_metadata.items()}
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):  # XLA's worker threads
        continue
      for event in line.events:
        name = names.get(event.metadata_id, "?")
        if name.startswith(("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "end: ")):
          continue  # the executor's own bookkeeping, and zero-length end markers
        total_ms[_kind(name)] += event.duration_ps / 1e9 / FLAGS.steps
        count[_kind(name)] += 1 / FLAGS.steps
  if not total_ms:
    raise SystemExit("no XLA thunk events: run with XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true")
  result = {"program": FLAGS.program, "batch": FLAGS.batch, "steps": FLAGS.steps,
            f"wall_s_per_{FLAGS.program}": wall_s,
            "convolutions": compute.for_backend().kernels(), "jax": jax.__version__,
            f"thread_ms_per_{FLAGS.program}": {k: round(v, 1) for k, v in total_ms.most_common()},
            f"events_per_{FLAGS.program}": {k: round(count[k]) for k, _ in total_ms.most_common()}}
  print(f"wall {wall_s:.3f} s per {FLAGS.program} (profiled), batch {FLAGS.batch}")
  for kind, ms in total_ms.most_common():
    print(f"{ms:9.1f} ms  {count[kind]:6.0f} events  {kind}")
  with open(argv[1], "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
