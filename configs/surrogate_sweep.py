"""Surrogate diffusion sweep (Table 4.5's shape) on the digits: t_mid in {0, 250, 500, 750}
against the full DDPM, samples/s and the digits Frechet distance per row. Needs the quickstart
DDPM trained in --workdir and the surrogate trained in surrogate.workdir:

  python -m jdiff.main --config=configs/quickstart.py --workdir=workdirs/quickstart --mode=train
  python -m jdiff.main --config=configs/quickstart_gan.py --workdir=workdirs/quickstart_gan --mode=train
  python -m jdiff.main --config=configs/surrogate_sweep.py --workdir=workdirs/quickstart --mode=bench

For the low-resolution DDPM surrogate (DDPM-16's analogue, 4x4 digits upsampled):
  --config.surrogate.kind=ddpm --config.surrogate.config=configs/quickstart_ddpm4.py
  --config.surrogate.workdir=workdirs/quickstart_ddpm4
Writes bench_samplers.json in --workdir and prints the table.
"""

import os

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "quickstart.py"))
  config.surrogate.kind = "sngan"
  config.surrogate.config = "configs/quickstart_gan.py"
  config.surrogate.workdir = "workdirs/quickstart_gan"
  config.surrogate.t_mids = (0, 250, 500, 750)
  config.bench.kind = "samplers"
  config.bench.samplers = ("surrogate",)
  config.bench.quality_samples = 512
  config.bench.num_iters = 2
  config.sampling.batch_size = 128
  return config_lib.apply_variant(config, variant)
