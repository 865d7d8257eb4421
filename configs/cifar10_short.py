"""Short diffusion (the HSE coursework "Diffusion Generative Models", A. Baryshnikov, section
4.3): T = 100, linear betas 4e-4 .. 0.18.

  python -m jdiff.main --config=configs/cifar10_short.py --workdir=workdirs/cifar10_short --mode=train

The end points keep the signal ratios of the T = 1000 process at the start and the end. The
paper reports FID 40.40 after 150k steps (Table 4.2) against 4.93 with T = 1000: samples stay
noisy.
"""

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.default_config()
  config.diffusion.num_timesteps = 100
  config.diffusion.beta_start = 4e-4
  config.diffusion.beta_end = 0.18
  config.training.num_steps = 150_000
  return config_lib.apply_variant(config, variant)
