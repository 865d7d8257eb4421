"""The architectures of Table 4.3 (the HSE coursework "Diffusion Generative Models", A.
Baryshnikov, section 4.4) on CIFAR-10.

  python -m jdiff.main --config=configs/cifar10_arch.py:ShallowRes2 --workdir=workdirs/shallowres2
  python -m jdiff.main --config=configs/cifar10_arch.py:MBConv64 --mode=summary

The argument after ':' is a preset of jdiff/models/presets.py (Default, DeepRes1, ShallowRes2,
ShallowRes1, MBConv64, MBConv96), or `tiny`; `--config.model.preset=NAME` does the same on any
config.
The paper trains each for 150k steps at batch 128.
"""

from jdiff import config_lib


def get_config(preset: str = "Default"):
  config = config_lib.default_config()
  config.training.num_steps = 150_000
  if preset == "tiny":  # the tiny variant of every config (tests); no preset
    return config_lib.apply_variant(config, "tiny")
  config.model.preset = preset
  return config
