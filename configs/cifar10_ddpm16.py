"""DDPM-16 (the HSE coursework "Diffusion Generative Models", A. Baryshnikov, section 4.6, Table
4.5): a DDPM on CIFAR-10 downscaled to 16x16 (area averaging), the low-resolution surrogate for
surrogate diffusion on 32x32 CIFAR-10.

  python -m jdiff.main --config=configs/cifar10_ddpm16.py --workdir=workdirs/cifar10_ddpm16 --mode=train
  python -m jdiff.main --config=configs/cifar10_surrogate.py:ddpm16 --workdir=workdirs/cifar10 --mode=bench

The study does not give DDPM-16's network; jdiff's choice is the Ho et al. net one level
shorter (16 -> 8 -> 4, channel multipliers (1, 2, 2), attention at 8x8, where the 32x32 net has
it at half its resolution), same T = 1000 and linear betas, so its chain and the 32x32 model's
share their steps: used as a surrogate it runs T -> t_mid at 16x16 and hands its x0 estimate
over. Expected: `--mode=summary` prints its parameter count; Table 4.5 reports FID 145 for
DDPM-16 alone (t_mid = 0) and 5.08 at t_mid = 750, at 2.53 / 1.17 samples/s on a V100.
"""

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.default_config()
  config.data.image_size = 16
  config.model.ch_mult = (1, 2, 2)
  config.model.attn_resolutions = (8,)
  return config_lib.apply_variant(config, variant)
