"""Ho et al. (2020) CIFAR-10 DDPM: 35.7M-parameter U-Net, T = 1000, linear betas, L_simple.

  python -m jdiff.main --config=configs/cifar10_ddpm.py --workdir=workdirs/cifar10 --mode=train

Expected: `--mode=summary` prints `parameters: 35746307`. The paper trains 800k steps at batch
128 (about 10.6 h on a TPU v3-8) to FID 3.17 / IS 9.46; that needs an accelerator.
"""

from jdiff import config_lib


def get_config(variant: str = ""):
  return config_lib.apply_variant(config_lib.default_config(), variant)
