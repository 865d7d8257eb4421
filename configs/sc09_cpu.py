"""A CPU-sized DiffWave on the 100 SC09 clips beside the repository (or any folder of WAVs).

  python -m jdiff.main --config=configs/sc09_cpu.py --workdir=workdirs/sc09_cpu --mode=train
  python -m jdiff.main --config=configs/sc09_cpu.py --workdir=workdirs/sc09_cpu --mode=sample

The full model's layout (gated residual layers, dilation cycle, skips, weight norm, T = 200,
linear betas 1e-4 .. 0.02) at 8 layers of 32 channels (dilations 1..128), on 1 s clips
resampled to 8 kHz, batch 4. Data: ../shared/data/sc09/sc09_sample.tar.gz when it exists (100
clips, 10 per digit), else set --config.data.path to a folder or .tar.gz of WAVs, or use
--config.data.source=sc09 (downloads Speech Commands v0.01).

Measured on 2 contended CPU cores: about 1 s per step; 600 steps (~10 min) learn the loudness
envelope of a spoken word, not intelligible speech (the paper's model trains 1M steps of the
24M-parameter net). --mode=sample writes samples/*.wav and samples/waveforms.png.
--config=configs/sc09_cpu.py:tiny is the tests' size (seconds).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sc09_diffwave  # pylint: disable=g-import-not-at-top,wrong-import-position

from jdiff import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(variant: str = ""):
  config = sc09_diffwave.audio_config()
  if os.path.exists(sc09_diffwave.SHARED_SC09):
    config.data.update(dict(source="folder", path=os.path.abspath(sc09_diffwave.SHARED_SC09)))
  config.data.update(dict(sample_rate=8000, audio_length=8000))
  config.diffwave.update(dict(residual_channels=32, skip_channels=32, num_layers=8,
                              dilation_cycle=8, embed_dims=(128, 256, 256)))
  config.training.update(dict(batch_size=4, num_steps=600, learning_rate=1e-3, warmup_steps=50,
                              ema_decay=0.995, log_every=25, checkpoint_every=100))
  config.sampling.update(dict(batch_size=8, num_samples=8))
  config.evaluation.num_samples = 64
  config = config_lib.apply_variant(config, variant)
  return sc09_diffwave.shrink_tiny(config) if variant == "tiny" else config
