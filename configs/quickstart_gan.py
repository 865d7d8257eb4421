"""SNGAN on the 8x8 digits: the surrogate model for surrogate diffusion (configs/surrogate_sweep.py).

  python -m jdiff.main --config=configs/quickstart_gan.py --workdir=workdirs/quickstart_gan --mode=train
"""

import importlib.util
import os


def _quickstart_config():
  spec = importlib.util.spec_from_file_location(
      "quickstart", os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _quickstart_config()
  config.model.kind = "sngan"
  config.gan.z_dim = 32
  config.gan.g_ch = 64
  config.gan.d_ch = 64
  config.training.num_steps = 2000   # generator steps, each after n_dis = 5 discriminator steps
  config.training.checkpoint_every = 500
  return config
