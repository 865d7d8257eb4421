"""The digits at 4x4 (half the quickstart's 8x8): the low-resolution DDPM surrogate, the
analogue of the study's DDPM-16 for 32x32 CIFAR-10; upsampled bilinearly when used.

  python -m jdiff.main --config=configs/quickstart_ddpm4.py --workdir=workdirs/quickstart_ddpm4 --mode=train
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
  config.data.image_size = 4
  config.model.ch_mult = (1, 2)
  config.model.attn_resolutions = ()
  return config
