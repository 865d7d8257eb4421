"""SNGAN on the 8x8 digits: the surrogate model for surrogate diffusion (configs/surrogate_sweep.py).

  python -m jdiff.main --config=configs/quickstart_gan.py --workdir=workdirs/quickstart_gan --mode=train
"""

import os

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "quickstart.py"))
  config.model.kind = "sngan"
  config.gan.z_dim = 32
  config.gan.g_ch = 64
  config.gan.d_ch = 64
  config.training.num_steps = 2000   # generator steps, each after n_dis = 5 discriminator steps
  config.training.checkpoint_every = 500
  return config_lib.apply_variant(config, variant)
