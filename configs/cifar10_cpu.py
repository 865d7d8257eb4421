"""CPU-scale CIFAR-10 for the paper tables (python -m jdiff.tools.paper_tables): a small U-Net
on CIFAR-10 (TFDS `cifar10`, the first 5,000 training images, 32x32 RGB, downloaded once),
scored with the FID Inception network against training images.

  python -m jdiff.main --config=configs/cifar10_cpu.py --workdir=workdirs/cifar10_cpu --mode=train
  python -m jdiff.tools.paper_tables --table=samplers --config=configs/cifar10_cpu.py \\
      --workdir=workdirs/cifar10_cpu --num_samples=500 --label="CPU-scale"

The tables of docs/results/samplers_cifar10_cpu/ trained on an exact subset instead: the first
932 images of each of the five official python batch files (4,660 images, `train_x` of an .npz),
and scored with the real FID Inception weights (pytorch-fid's file, or a local copy):

      --config.data.source=npz --config.data.path=<your copy of the subset> \\
      --config.data.npz_key=train_x --config.evaluation.inception_weights=<weights .pth>

(docs/results/cpu_tables.sh passes these to every command of that table; its FID / KID
reference is the subset's first 1,000 images, written to an .npz of their own.)

Why this: it is the papers' data set at the papers' resolution and T = 1000 schedule, so the
sampler table's comparisons (DDIM vs DDPM at small S, VAR vs STEP, respacing) are between the
same samplers on the same kind of model; only the network (ch 32, no attention, 1.06M
parameters) and the training (1,500 steps of batch 64, with the EMA warm-up) are shrunk so that
training fits in about 55 minutes on 2 idle CPU cores (2.1-2.4 s a step, measured).
Expected (measured on the exact subset, docs/results/samplers_cifar10_cpu/): CIFAR-like colour
scenes; at 100 samples a row against 1,000 training images, FID ~200-350 and KID x1e3 ~60-320
by sampler, where 100 real images score FID ~145 and KID ~0 (FID is biased upwards at small N),
so compare rows of one table, never with the papers' numbers.
Full scale: configs/cifar10_ddpm.py (35.7M parameters, 800k steps, 50k samples).
"""

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.default_config()
  config.data.source = "cifar10"  # TFDS; the exact subset: see the docstring
  config.data.split = "train[:5000]"
  config.evaluation.reference_split = "train[:5000]"  # FID / KID against the training images

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
  config.evaluation.metrics = ("fid", "kid")  # no IS: the tables' converted weights have no logits
  config.evaluation.feature_batch_size = 50
  config.evaluation.kid_subset_size = 500
  return config_lib.apply_variant(config, variant)
