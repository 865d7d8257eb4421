"""Quickstart with an adaptive-depth U-Net: the paper's method (zero skip, c = 2, bucketed
training) on scikit-learn's 8x8 digits; 3 levels, so k(t) in {0, 1, 2}. Runs on a CPU.

  python -m jdiff.main --config=configs/quickstart_adaptive.py \
      --workdir=workdirs/quickstart_adaptive --mode=train    # then --mode=sample
  python -m jdiff.main --config=configs/quickstart_adaptive.py --workdir=workdirs/bench_depth \
      --mode=bench --config.bench.kind=depth --config.diffusion.num_timesteps=100 \
      --config.sampling.batch_size=16 --config.bench.num_iters=2

Expected: after the quickstart's 2500 steps (batch 64), a grid at
workdirs/quickstart_adaptive/samples/grid.png of recognisable digits, sampled with the shallow
network on the noisiest steps (k(t) = 2 on 58%, 1 on 24%, 0 on 18% of the 1000 steps).
Training dispatches on the host (depth.dispatch=host): one compiled train step per depth, so
a step at depth k costs about what its FLOPs cost (measured with --config.bench.kind=depth on 2
shared, busy CPU cores, batch 64, median of 3 interleaved rounds: time k/0 = 0.77 / 0.37 for
FLOPs k/0 = 0.86 / 0.42; bucketed c = 2 expects 0.52 of a full step's time for 0.63 of its
FLOPs). The single lax.switch step (depth.dispatch=switch) ran 16-23x slower there.
"""

import os

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "quickstart.py"))
  config.model.skip_type = "zero"
  config.depth.training = "bucketed"
  config.depth.power = 2.0
  return config_lib.apply_variant(config, variant)
