"""A CPU-sized mel-conditioned DiffWave (a vocoder) on the 100 SC09 clips beside the repository.

  python -m jdiff.main --config=configs/sc09_vocoder_cpu.py --workdir=workdirs/sc09_vocoder_cpu --mode=train
  python -m jdiff.main --config=configs/sc09_vocoder_cpu.py --workdir=workdirs/sc09_vocoder_cpu --mode=sample

configs/sc09_cpu.py's net (10 layers of 32 channels, 4 kHz, peak-normalised clips, T = 200)
with DiffWave's mel conditioning (diffwave.n_mels = 80: the reference vocoder's 1024-point STFT,
hop 256, upsampled 256x by two transposed convs), on 4,096-sample clips (a whole number of
hops). The unconditional CPU config has to invent a word's shape and does not get there in
minutes; given the mel spectrogram of a real clip, the vocoder only has to fill in the waveform,
which a small net learns in minutes: `--mode=sample` conditions sample i on the mel of clip i of
sampling.mel_split (the shared archive has no split lists, so these are clips it trained on:
a reconstruction demo, like the FastDPM review's LJSpeech vocoder, not generation).
Its samples are scored like every audio model (SC09-classifier FD against the clips); the
results and what they sound like: docs/results/audio_cpu/README.md.
--config=configs/sc09_vocoder_cpu.py:tiny is the tests' size (seconds).
"""

import os

from jdiff import config_lib

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(variant: str = ""):
  base = os.path.join(HERE, "sc09_cpu.py")
  config = config_lib.load_config(f"{base}:{variant}" if variant else base)
  config.diffwave.n_mels = 80
  if not variant:
    config.data.audio_length = 4096  # the mel frames (hop 256) must tile the clip
  return config
