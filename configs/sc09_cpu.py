"""A CPU-sized DiffWave on SC09 clips (Speech Commands' digits, or any folder of WAVs).

  python -m jdiff.main --config=configs/sc09_cpu.py --workdir=workdirs/sc09_cpu --mode=train
  python -m jdiff.main --config=configs/sc09_cpu.py --workdir=workdirs/sc09_cpu --mode=sample

The full model's layout (gated residual layers, dilation cycle, skips, weight norm, T = 200,
linear betas 1e-4 .. 0.02) at 10 layers of 32 channels (dilations 1..512, receptive field 2047
samples = 0.5 s), on 1 s clips resampled to 4 kHz (telephone-narrow: nothing above 2 kHz) and
each scaled to a peak of 0.9 (data.peak_normalize: SC09's quiet clips otherwise let the model
predict eps ~ x_t and learn nothing), batch 8, lr 2e-3.
Data: by default SC09 itself (data.source=sc09: the digits of Speech Commands v0.01, downloaded
once); a local copy of Speech Commands (folder or .tar.gz) with
  --config.data.path=<your copy>          (its digit folders zero/ .. nine/, no download)
or any folder or .tar.gz of WAVs in word folders with
  --config.data.source=folder --config.data.path=<your folder or .tar.gz>
The measured runs below trained on 100 clips, 10 per digit (an overfitting-sized set: a demo,
not SC09 generation).

Measured (2 CPU cores shared with other jobs, contended): 1.25-1.4 steps/s once compiled, loss
1.0 -> 0.07 by step 850 (stopped there, ~11 min of stepping); what its samples look and sound like
and their SC09-classifier scores: docs/results/audio_cpu/README.md. --mode=sample writes
samples/*.wav and samples/waveforms.png.
--config=configs/sc09_cpu.py:tiny is the tests' size (seconds).
"""

import os

from jdiff import config_lib

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(variant: str = ""):
  # The tiny variant is sc09_diffwave.py's (2 layers of 8 channels, 1024 samples, T = 20).
  base = os.path.join(HERE, "sc09_diffwave.py")
  config = config_lib.load_config(f"{base}:{variant}" if variant else base)
  if variant:
    return config
  config.data.update(dict(sample_rate=4000, audio_length=4000, peak_normalize=0.9))
  config.diffwave.update(dict(residual_channels=32, skip_channels=32, num_layers=10,
                              dilation_cycle=10, embed_dims=(128, 256, 256)))
  config.training.update(dict(batch_size=8, num_steps=1500, learning_rate=2e-3, warmup_steps=50,
                              ema_decay=0.995, log_every=25, checkpoint_every=100))
  config.sampling.update(dict(batch_size=8, num_samples=8))
  config.evaluation.num_samples = 64
  return config
