"""Class-conditional CIFAR-10 with classifier-free guidance (Ho & Salimans 2021), paper scale.

Ho et al.'s 35.7M-parameter CIFAR-10 U-Net (configs/cifar10_ddpm.py) with a label embedding added
to its timestep embedding (as improved-diffusion's class_cond), labels from TFDS's "label"
feature, 10% of them dropped during training (p_uncond = 0.1, Ho & Salimans' choice), sampled
with guidance w = 0.3 (their best FID on ImageNet 64; CIFAR-10 is not in their paper).

  python -m jdiff.main --config=configs/cifar10_classcond.py --workdir=workdirs/cifar10_cond \
      --mode=train
  python -m jdiff.main --config=configs/cifar10_classcond.py --workdir=workdirs/cifar10_cond \
      --mode=sample --config.sampling.name=dpm_solver_pp --config.sampling.steps=20

Expected: `--mode=summary` prints `parameters: 35751939` (Ho's net and an 11 x 512 label
embedding). 800k steps at batch 128 need an accelerator (launch/README.md); not yet run.
"""

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.default_config()
  config.data.label_key = "label"
  config.model.num_classes = 10
  config.training.p_uncond = 0.1
  config.sampling.guidance = 0.3
  config.sampling.num_samples = 100  # the grid: 10 per class, one row each
  return config_lib.apply_variant(config, variant)
