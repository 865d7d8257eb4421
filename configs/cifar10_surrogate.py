"""Surrogate diffusion on CIFAR-10, Table 4.5's rows: the Ho et al. DDPM (workdirs/cifar10) started
at t_mid in {0, 250, 500, 750} from SNGAN-ResNet (default) or DDPM-16 (variant `ddpm16`).

  python -m jdiff.main --config=configs/cifar10_surrogate.py --workdir=workdirs/cifar10 --mode=bench
  python -m jdiff.main --config=configs/cifar10_surrogate.py:ddpm16 --workdir=workdirs/cifar10 --mode=bench
  python -m jdiff.main --config=configs/cifar10_surrogate.py --workdir=workdirs/cifar10 \\
      --mode=evaluate --config.surrogate.t_mid=500

Needs the three models trained (configs/cifar10_ddpm.py, cifar10_sngan.py, cifar10_ddpm16.py).
The bench prints samples/s, each model's network evaluations and the measured cost in
full-resolution steps; the study's speeds (V100): DDPM-16 2.53 / 1.84 / 1.38 / 1.17 samples/s
and SNGAN 188.4 / 4.00 / 1.96 / 1.30 at t_mid 0 / 250 / 500 / 750.
"""

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.default_config()
  variants = [v for v in variant.split(",") if v]
  if "ddpm16" in variants:
    config.surrogate.update(dict(kind="ddpm", config="configs/cifar10_ddpm16.py",
                                 workdir="workdirs/cifar10_ddpm16"))
    variants.remove("ddpm16")
  else:
    config.surrogate.update(dict(kind="sngan", config="configs/cifar10_sngan.py",
                                 workdir="workdirs/cifar10_sngan"))
  config.surrogate.t_mids = (0, 250, 500, 750)
  config.bench.kind = "samplers"
  config.bench.samplers = ("surrogate",)
  return config_lib.apply_variant(config, ",".join(variants))
