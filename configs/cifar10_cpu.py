"""CPU-scale CIFAR-10 for the paper tables (python -m jdiff.tools.paper_tables): a small U-Net
on the exact CIFAR-10 subset (4,660 training images, 32x32 RGB), scored with the real FID
Inception network against those same training images.

  python -m jdiff.tools.paper_tables --table=samplers --config=configs/cifar10_cpu.py \\
      --workdir=workdirs/cifar10_cpu --num_samples=500 --label="CPU-scale" \\
      --config.data.path=../shared/data/cifar10_exact_subset.npz \\
      --config.evaluation.inception_weights=../shared/weights/fid_inception_2015-12-05_pool3.pth

Why this: it is the papers' data set at the papers' resolution and T = 1000 schedule, so the
sampler table's comparisons (DDIM vs DDPM at small S, VAR vs STEP, respacing) are between the
same samplers on the same kind of model; only the network (ch 32, no attention, 1.06M
parameters) and the training (1,500 steps of batch 64, with the EMA warm-up) are shrunk so that
training fits in about 55 minutes on 2 idle CPU cores (2.1-2.4 s a step, measured).
Expected (measured, docs/results/samplers_cifar10_cpu/): CIFAR-like colour scenes; at 100
samples a row against 1,000 training images, FID ~200-350 and KID x1e3 ~60-320 by sampler,
where 100 real images score FID ~145 and KID ~0 (FID is biased upwards at small N), so compare
rows of one table, never with the papers' numbers. On a machine with TFDS data set
data.source=cifar10, data.split="train[:5000]".
Full scale: configs/cifar10_ddpm.py (35.7M parameters, 800k steps, 50k samples).
"""

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.default_config()
  config.data.source = "npz"
  config.data.path = "../shared/data/cifar10_exact_subset.npz"  # override with your copy
  config.data.npz_key = "train_x"

  config.model.ch = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = ()
  config.model.dropout = 0.0
  config.model.num_groups = 8

  config.training.batch_size = 64
  config.training.num_steps = 1500
  config.training.learning_rate = 1e-3
  config.training.warmup_steps = 200
  config.training.ema_decay = 0.999
  # Without the warm-up 0.999 ** 1500 = 22% of the sampled network is still its initial (zero-output)
  # state after 1,500 steps, and the samples stay noise (docs/results/samplers_cifar10_cpu/).
  config.training.ema_warmup = True
  config.training.log_every = 100
  config.training.checkpoint_every = 500

  config.sampling.batch_size = 100
  config.evaluation.num_samples = 500
  config.evaluation.metrics = ("fid", "kid")  # the shared weights have no logits: no IS
  config.evaluation.feature_batch_size = 50
  config.evaluation.kid_subset_size = 500
  return config_lib.apply_variant(config, variant)
