"""SNGAN-ResNet for CIFAR-10 (Miyato et al. 2018, its CIFAR-10 ResNet and training setting): the
GAN surrogate of surrogate diffusion (the HSE coursework "Diffusion Generative Models",
A. Baryshnikov, Table 4.5, "SNGAN-ResNet-32").

  python -m jdiff.main --config=configs/cifar10_sngan.py --workdir=workdirs/cifar10_sngan --mode=train
  python -m jdiff.main --config=configs/cifar10_surrogate.py --workdir=workdirs/cifar10 --mode=bench

Generator: z (128) -> 4x4x256 -> three up-sampling residual blocks of width 256 -> 32x32x3, tanh;
discriminator: spectrally normalised residual blocks of width 128 (two down-sampling to 8x8, two
more), ReLU, global sum pooling, linear. Hinge loss, n_dis = 5 discriminator steps per generator
step, Adam lr 2e-4, beta1 = 0, beta2 = 0.9, batch 64, 50k generator updates (Miyato et al.'s
ResNet run). Table 4.5 reports FID 13.70 for it alone (t_mid = 0) at 188 samples/s on a V100.
"""

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.default_config()
  config.model.kind = "sngan"
  config.gan.update(dict(z_dim=128, g_ch=256, d_ch=128, n_dis=5, learning_rate=2e-4, beta1=0.0,
                         beta2=0.9))
  config.training.batch_size = 64
  config.training.num_steps = 50_000   # generator updates
  config.training.checkpoint_every = 5_000
  return config_lib.apply_variant(config, variant)
