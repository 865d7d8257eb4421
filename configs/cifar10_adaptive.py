"""Adaptive-depth DDPM on CIFAR-10 (Giladi et al., "Accelerating Diffusion Models using Adaptive
Neural Network Architecture"), the paper's choice: zero skip, c = 2, bucketed training, on Ho et
al.'s U-Net (4 levels: k(t) in 0..3).

  python -m jdiff.main --config=configs/cifar10_adaptive.py --workdir=workdirs/cifar10_adaptive \
      --mode=train        # then --mode=sample; --mode=bench --config.bench.kind=depth

Expected (paper): FID 5.59 at c = 2 against 4.58 at c = 0 for the same network, with sampling
about 47% faster (Table 2: 47.52%); `--mode=bench` with bench.kind=depth reports the saving
measured here next to the FLOP-count saving. Training needs an accelerator (800k steps).
"""

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.default_config()
  config.model.skip_type = "zero"
  config.depth.training = "bucketed"
  config.depth.power = 2.0
  return config_lib.apply_variant(config, variant)
