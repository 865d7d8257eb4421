"""Ho et al. (2020)'s 256x256 DDPMs (CelebA-HQ, LSUN church / bedroom / cat): the 114M U-Net.

ch 128, ch_mult (1, 1, 2, 2, 4, 4), 2 residual blocks per level, attention at 16x16, dropout 0
(hojonathanho/diffusion scripts/run_celebahq.py and run_lsun.py: model 'unet2d16b2c112244',
"114M"), T = 1000 linear betas 1e-4 .. 0.02, sampled with the posterior variance (fixedsmall,
as diffusion_utils.py), Adam lr 2e-5 at batch 64 (the paper, appendix B).

  python -m jdiff.main --config=configs/ddpm_256.py:church --mode=summary   # parameters: 113673219
  python -m jdiff.tools.import_weights --from=diffusers --source=google/ddpm-church-256 --workdir=W
  python -m jdiff.main --config=configs/ddpm_256.py:church --workdir=W --mode=sample \
      --config.sampling.name=ddim --config.sampling.steps=50 --config.sampling.batch_size=4

Variants (`:name`): celebahq (the default), church, bedroom, cat; each sets its training steps
(the paper: 0.5M, 1.2M, 2.4M, 1.8M) and its data folder (256x256 images: data.path). Add
`,tiny` (e.g. `:church,tiny`) for the tests' size. At 256x256 a sample batch is memory-bound:
pick sampling.batch_size for the device, and model.remat=True to train in less memory.
"""

from jdiff import config_lib

DATASETS = {  # variant: (training steps in the paper, where the images are by default)
    "celebahq": (500_000, "data/celebahq256"),
    "church": (1_200_000, "data/lsun_church256"),
    "bedroom": (2_400_000, "data/lsun_bedroom256"),
    "cat": (1_800_000, "data/lsun_cat256"),
}


def get_config(variant: str = ""):
  names = [part for part in variant.split(",") if part]
  dataset = next((name for name in names if name in DATASETS), "celebahq")
  rest = [name for name in names if name not in DATASETS]
  config = config_lib.default_config()
  steps, path = DATASETS[dataset]
  config.data.update(dict(source="folder", path=path, image_size=256, num_channels=3,
                          random_flip=True))
  config.model.update(dict(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                           attn_resolutions=(16,), dropout=0.0))
  config.diffusion.update(dict(num_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                               beta_end=0.02, variance_type="fixedsmall"))
  config.training.update(dict(batch_size=64, learning_rate=2e-5, num_steps=steps))
  config.sampling.update(dict(batch_size=8, num_samples=8))
  return config_lib.apply_variant(config, ",".join(rest))
