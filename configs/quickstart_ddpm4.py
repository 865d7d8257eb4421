"""The digits at 4x4 (half the quickstart's 8x8): the low-resolution DDPM surrogate, the
analogue of the study's DDPM-16 for 32x32 CIFAR-10; upsampled bilinearly when used.

  python -m jdiff.main --config=configs/quickstart_ddpm4.py --workdir=workdirs/quickstart_ddpm4 --mode=train
"""

import os

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "quickstart.py"))
  config.data.image_size = 4
  config.model.ch_mult = (1, 2)
  config.model.attn_resolutions = ()
  return config_lib.apply_variant(config, variant)
