"""DiffWave on SC09 (Kong et al. 2021), the unconditional model of FastDPM's audio experiments.

  python -m jdiff.main --config=configs/sc09_diffwave.py --workdir=workdirs/sc09 --mode=train

36 residual layers, 256 residual and skip channels, dilation cycle 12, weight-normalised convs,
T = 200 with linear betas 1e-4 .. 0.02, Adam lr 2e-4, 1 s clips at 16 kHz (SC09: the digits
zero..nine of Speech Commands v0.01, downloaded once through TFDS's download manager).
Expected: `--mode=summary` prints `parameters: 24071681` (24,034,305 with
--config.diffwave.weight_norm=False; the paper: 24.1M). Training it needs an accelerator (the
paper: 1M steps at batch 16). Offline, point it at WAVs: --config.data.source=folder
--config.data.path=/path/to/sc09_or_wavs(.tar.gz) (data.words keeps the digit folders)

--config=configs/sc09_diffwave.py:tiny shrinks it to seconds (2 layers of 8 channels, 1024-sample
clips, T = 20): what the tests use; its samples are noise.
"""

from jdiff import audio
from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.default_config()
  config.data.update(dict(kind="audio", source="sc09", num_channels=1, random_flip=False,
                          audio_length=16000, sample_rate=16000, words=audio.DIGITS))
  config.model.kind = "diffwave"
  config.model.dropout = 0.0
  # DiffWave's samplers (philsyn/DiffWave-unconditional, lmnt-com/diffwave) add sigma_t =
  # sqrt(beta~_t) noise: fixedsmall. (fixedlarge's sqrt(beta_t) leaves an audible noise floor:
  # docs/results/audio_cpu/.) Training is the same under either.
  config.diffusion.update(dict(num_timesteps=200, beta_start=1e-4, beta_end=0.02,
                               variance_type="fixedsmall"))
  config.training.update(dict(batch_size=16, num_steps=1_000_000, learning_rate=2e-4,
                              warmup_steps=0, ema_decay=0.9999, checkpoint_every=5000))
  # DiffWave's sampler (philsyn/DiffWave-unconditional, as FastDPM's) does not clip x0.
  config.sampling.update(dict(batch_size=16, num_samples=16, clip_x0="off"))
  config.evaluation.metrics = ("sc09_fd",)  # jdiff.evaluation.speech_classifier; audio_table
  config = config_lib.apply_variant(config, variant)
  if variant == "tiny":
    config.diffwave.update(dict(residual_channels=8, skip_channels=8, num_layers=2,
                                dilation_cycle=2, embed_dims=(16, 32, 32)))
    config.data.audio_length = 1024
  return config
