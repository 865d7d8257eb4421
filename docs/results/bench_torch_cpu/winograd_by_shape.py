"""Winograd F(2x2, 3x3) (jdiff.cpu.convolutions.winograd_conv3x3) against XLA:CPU's Eigen convolution
at the Ho net's 3x3 shapes: the forward, and the forward with both gradients (jax.vjp), time and
GFLOP/s on the direct convolution's FLOPs, every call blocked on, all variants interleaved round
by round. Where `winograd_applies`' thresholds come from (README, "CPU kernels").

  python docs/results/bench_torch_cpu/winograd_by_shape.py OUT.json [--batch=32] [--rounds=5] \
      [--shapes=32:128:128,...]
"""

import json

from absl import app
from absl import flags
import jax
from jax import lax
import numpy as np

from jdiff import cpu
from jdiff.cpu import convolutions as conv
from jdiff.cpu import host_memory
from jdiff.tools import report
from jdiff.tools import timing

flags.DEFINE_integer("batch", 32, "images per call")
flags.DEFINE_integer("rounds", 5, "interleaved rounds (after one warm-up)")
# resolution:input channels:output channels; default: the Ho et al. CIFAR-10 U-Net's 3x3 convs
# (the quickstart net's: 8:32:32,8:64:32,4:64:64,2:64:64).
flags.DEFINE_list("shapes", ["32:128:128", "32:256:128", "16:256:256", "8:256:256", "4:256:256"],
                  "the convolutions timed")
FLAGS = flags.FLAGS
NUMBERS = ("NHWC", "HWIO", "NHWC")


def _direct(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NUMBERS)


def _with_gradients(conv_fn):
  def run(x, kernel, dy):
    y, vjp = jax.vjp(conv_fn, x, kernel)
    return (y,) + vjp(dy)
  return run


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: winograd_by_shape.py OUT.json [--batch=N] [--rounds=N] "
                         "[--shapes=R:CIN:COUT,...]")
  host_memory.keep()  # as jdiff's --mode runs do
  calls = {}
  for size, in_channels, out_channels in (map(int, shape.split(":")) for shape in FLAGS.shapes):
    x = jax.random.normal(jax.random.key(0), (FLAGS.batch, size, size, in_channels))
    kernel = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, in_channels, out_channels))
    dy = jax.random.normal(jax.random.key(2), (FLAGS.batch, size, size, out_channels))
    for method, conv_fn in (("eigen", _direct), ("winograd", conv.winograd_conv3x3)):
      eigen = cpu.CpuCompute(convolutions="eigen")
      forward = eigen.jit(conv_fn)
      gradients = eigen.jit(_with_gradients(conv_fn))
      shape = (size, in_channels, out_channels)
      calls[shape + ("forward", method)] = lambda f=forward, a=(x, kernel): f(*a)
      calls[shape + ("forward + gradients", method)] = lambda f=gradients, a=(x, kernel, dy): f(*a)
  times = timing.interleaved_rounds({str(k): v for k, v in calls.items()}, FLAGS.rounds)
  rows = []
  for size, in_channels, out_channels, part, method in calls:
    if method != "eigen":
      continue
    key = (size, in_channels, out_channels, part)
    eigen, winograd = (np.asarray(times[str(key + (m,))]) for m in ("eigen", "winograd"))
    direct_flops = (2 * 9 * in_channels * out_channels * FLAGS.batch * size * size
                    * (3 if part == "forward + gradients" else 1))
    applies = conv.winograd_applies(
        jax.ShapeDtypeStruct((FLAGS.batch, size, size, in_channels), np.float32),
        jax.ShapeDtypeStruct((3, 3, in_channels, out_channels), np.float32), (1, 1), "SAME",
        dimension_numbers=NUMBERS)
    rows.append({"conv": f"{size}x{size} {in_channels}->{out_channels}", "part": part,
                 "eigen_ms": 1e3 * float(np.median(eigen)),
                 "winograd_ms": 1e3 * float(np.median(winograd)),
                 "eigen_gflop_per_s": direct_flops / float(np.median(eigen)) / 1e9,
                 "winograd_gflop_per_s": direct_flops / float(np.median(winograd)) / 1e9,
                 "winograd_speedup": timing.ratio_stats(eigen, winograd),
                 "applies": bool(applies)})
  report.print_table(
      rows, [report.Column("conv", "conv"), report.Column("part", "part"),
             report.Column("Eigen ms", "eigen_ms", ".1f"),
             report.Column("Winograd ms", "winograd_ms", ".1f"),
             report.Column("Eigen / Winograd time", lambda r: r["winograd_speedup"],
                           lambda s: f"{s['median']:.2f} ({s['min']:.2f}..{s['max']:.2f})"),
             report.Column("Winograd used by default", "applies")],
      title=f"3x3 convolutions of the Ho net, batch {FLAGS.batch}, median of {FLAGS.rounds} "
            f"interleaved rounds, {jax.devices()[0]}; GFLOP/s (JSON) on the direct FLOPs")
  with open(argv[1], "w") as f:
    json.dump({"batch": FLAGS.batch, "rounds": FLAGS.rounds, "jax": jax.__version__,
               "rows": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
