"""The Ho net's 3x3 convolutions at each of its resolutions, batch 8, on both XLA:CPU kernel
libraries (`cpu.convolutions`: eigen and ynn, XLA's default): forward, input gradient,
XLA's filter gradient and jdiff's matrix-product one (cpu.filter_grad=matmul); time and
GFLOP/s, every call blocked on, all variants interleaved round by round. Why the train step's
32x32 level ran at a lower FLOP rate than the rest (README, adaptive depth) and why jdiff
compiles convolutions for Eigen (README, CPU kernels).

  python docs/results/bench_depth_ho_cpu/conv_by_resolution.py [OUT.json]
"""

import sys

import jax
from jax import lax
import numpy as np

from jdiff import cpu
from jdiff.cpu import convolutions as conv
from jdiff.tools import report
from jdiff.tools import timing

BATCH = 8
# (resolution, input channels, output channels) of the Ho et al. CIFAR-10 U-Net's 3x3 convs.
SHAPES = ((32, 128, 128), (32, 256, 128), (16, 256, 256), (8, 256, 256), (4, 256, 256))
CALLS_PER_TIMING = 5
ROUNDS = 5
NUMBERS = ("NHWC", "HWIO", "NHWC")


def _programs(size, in_channels, out_channels):
  x = jax.random.normal(jax.random.key(0), (BATCH, size, size, in_channels))
  kernel = 0.01 * jax.random.normal(jax.random.key(1), (3, 3, in_channels, out_channels))
  dy = jax.random.normal(jax.random.key(2), (BATCH, size, size, out_channels))

  def forward(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NUMBERS)

  def matmul_conv(x, kernel):
    return conv.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NUMBERS)

  def filter_gradient(conv_fn):
    return lambda x, kernel, dy: jax.vjp(lambda kernel: conv_fn(x, kernel), kernel)[1](dy)[0]
  return {
      "forward": (forward, (x, kernel)),
      "input gradient": (lambda x, kernel, dy: jax.vjp(lambda x: forward(x, kernel), x)[1](dy)[0],
                         (x, kernel, dy)),
      "filter gradient (XLA)": (filter_gradient(forward), (x, kernel, dy)),
      "filter gradient (matmul)": (filter_gradient(matmul_conv), (x, kernel, dy)),
  }


def _blocked_calls(program, args):
  for _ in range(CALLS_PER_TIMING):
    jax.block_until_ready(program(*args))


def main():
  calls, flops = {}, {}
  for size, in_channels, out_channels in SHAPES:
    for part, (fn, args) in _programs(size, in_channels, out_channels).items():
      for kernels in ("eigen", "ynn"):  # the kernel libraries; Winograd: winograd_by_shape.py
        program = cpu.CpuCompute(convolutions=kernels).jit(fn)
        name = f"{size}x{size} {in_channels}->{out_channels} {part} [{kernels}]"
        calls[name] = lambda program=program, args=args: _blocked_calls(program, args)
        flops[name] = 2 * 9 * in_channels * out_channels * BATCH * size * size
  times = timing.interleaved_rounds(calls, ROUNDS)
  rows = []
  for name, seconds in times.items():
    per_call = float(np.median(seconds)) / CALLS_PER_TIMING
    rows.append({"op": name, "ms": 1e3 * per_call, "gflop_per_s": flops[name] / per_call / 1e9,
                 "ms_min": 1e3 * min(seconds) / CALLS_PER_TIMING,
                 "ms_max": 1e3 * max(seconds) / CALLS_PER_TIMING})
  report.print_table(
      rows, [report.Column("op [cpu.convolutions]", "op"),
             report.Column(f"ms (median of {ROUNDS})", "ms", ".2f"),
             report.Column("GFLOP/s", "gflop_per_s", ".1f")],
      title=f"3x3 convolutions of the Ho net, batch {BATCH}, {jax.devices()[0]}, each call "
            "blocked on")
  if len(sys.argv) > 1:
    report.write_json(sys.argv[1], {"batch": BATCH, "calls_per_timing": CALLS_PER_TIMING,
                                    "blocked_per_call": True, "rows": rows})


if __name__ == "__main__":
  main()
