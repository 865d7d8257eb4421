"""The Ho net's 3x3 convolutions at each of its resolutions, batch 8: forward, input gradient
and filter gradient (jdiff's matrix products, model.conv_filter_grad=matmul, what the CPU
train step uses), time and GFLOP/s, interleaved rounds. Why a train step at depth 3 (only the
32x32 level left) runs at a lower FLOP rate than the full step (README, adaptive depth).

  python docs/results/bench_depth_ho_cpu/conv_by_resolution.py [OUT.json]
"""

import sys

import jax
from jax import lax
import numpy as np

from jdiff.models import conv
from jdiff.tools import report
from jdiff.tools import timing

BATCH = 8
# (resolution, input channels, output channels) of the Ho et al. CIFAR-10 U-Net's 3x3 convs.
SHAPES = ((32, 128, 128), (32, 256, 128), (16, 256, 256), (8, 256, 256), (4, 256, 256))
CALLS_PER_TIMING = 10
NUMBERS = ("NHWC", "HWIO", "NHWC")


def _programs(size, in_channels, out_channels):
  x = jax.random.normal(jax.random.key(0), (BATCH, size, size, in_channels))
  kernel = 0.01 * jax.random.normal(jax.random.key(1), (3, 3, in_channels, out_channels))
  dy = jax.random.normal(jax.random.key(2), (BATCH, size, size, out_channels))

  def forward(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NUMBERS)

  def jdiff_conv(x, kernel):
    return conv.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NUMBERS)
  return {
      "forward": (jax.jit(forward), (x, kernel)),
      "input gradient": (jax.jit(lambda x, kernel, dy: jax.vjp(
          lambda x: forward(x, kernel), x)[1](dy)[0]), (x, kernel, dy)),
      "filter gradient": (jax.jit(lambda x, kernel, dy: jax.vjp(
          lambda kernel: jdiff_conv(x, kernel), kernel)[1](dy)[0]), (x, kernel, dy)),
  }


def main():
  calls, flops = {}, {}
  for size, in_channels, out_channels in SHAPES:
    for part, (program, args) in _programs(size, in_channels, out_channels).items():
      name = f"{size}x{size} {in_channels}->{out_channels} {part}"
      calls[name] = (lambda program=program, args=args:
                     [program(*args) for _ in range(CALLS_PER_TIMING)][-1])
      flops[name] = 2 * 9 * in_channels * out_channels * BATCH * size * size
  times = timing.interleaved_rounds(calls, 5)
  rows = []
  for name, seconds in times.items():
    per_call = float(np.median(seconds)) / CALLS_PER_TIMING
    rows.append({"op": name, "ms": 1e3 * per_call, "gflop_per_s": flops[name] / per_call / 1e9,
                 "ms_min": 1e3 * min(seconds) / CALLS_PER_TIMING,
                 "ms_max": 1e3 * max(seconds) / CALLS_PER_TIMING})
  report.print_table(
      rows, [report.Column("op", "op"), report.Column("ms (median of 5)", "ms", ".2f"),
             report.Column("GFLOP/s", "gflop_per_s", ".1f")],
      title=f"3x3 convolutions of the Ho net, batch {BATCH}, {jax.devices()[0]}")
  if len(sys.argv) > 1:
    report.write_json(sys.argv[1], {"batch": BATCH, "rows": rows})


if __name__ == "__main__":
  main()
