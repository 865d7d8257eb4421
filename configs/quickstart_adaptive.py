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
On a CPU the bucketed train step, whose depth is a traced lax.switch index, runs about 10x
slower than the full-depth one (measured on 2 cores with jax 0.10.2: 23-34 s against 2.5 s for
10 steps; XLA:CPU runs convolutions inside control flow slowly), so training takes well over an
hour there (not measured on an accelerator).
"""

import os

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "quickstart.py"))
  config.model.skip_type = "zero"
  config.depth.training = "bucketed"
  config.depth.power = 2.0
  return config_lib.apply_variant(config, variant)
