"""A CPU-sized mel-conditioned DiffWave (a vocoder) on SC09 clips (data as configs/sc09_cpu.py).

  python -m jdiff.main --config=configs/sc09_vocoder_cpu.py --workdir=workdirs/sc09_vocoder_cpu --mode=train
  python -m jdiff.main --config=configs/sc09_vocoder_cpu.py --workdir=workdirs/sc09_vocoder_cpu --mode=sample

configs/sc09_cpu.py's net (10 layers of 32 channels, 4 kHz, peak-normalised clips, T = 200,
sampled with fixedsmall as DiffWave's code) with DiffWave's mel conditioning (80 mel bands,
upsampled by two transposed convs), on 4,096-sample clips (a whole number of hops). The STFT is
the reference vocoder's scaled in time to 4 kHz (deliberately not its sample counts): a
256-point window (64 ms; the reference's 1024 points at 22.05 kHz are 46 ms) and a 64-sample hop
(16 ms; 256 at 22.05 kHz: 11.6 ms), upsampled 8 x 8. At 4 kHz the reference's 1024 / 256 would
make a frame 256 ms / 64 ms long; --config.diffwave.mel_n_fft=1024 --config.diffwave.mel_hop=256
restores the sample counts.

`--mode=sample` conditions sample i on the mel of clip i of sampling.mel_split (in the measured
run, a 100-clip archive without split lists: clips it trained on, so a reconstruction demo,
like the FastDPM review's LJSpeech vocoder, not generation). The unconditional CPU config has to
invent a word's shape; the vocoder is given it.

Measured (2 CPU cores, ~1.5 steps/s; docs/results/audio_cpu/README.md has the commands, samples,
pictures and scores): this config's 1,500 steps (lr 2e-3, whole clips, ~17 min) give samples
with their source words' envelopes (r 0.95) and spectra but unvoiced (voicing 0.25 sampled with
fixedlarge; the source clips 0.86, noise 0.12). The measured run: 1,625 steps so, then at lr
2e-4 (--config.training.learning_rate=2e-4 --config.training.num_steps=4525), then on random
crops (the same + --config.training.crop_mel_frames=16 --config.training.batch_size=32
--config.training.num_steps=20000); the voicing rises slowly: 0.33 at step 4,250, 0.44 at
11,525, 0.51 at 20,000 (SC09-classifier FD 11.0): the words' envelopes and formants, voiced in
their lowest harmonics, not clean speech.
`bash launch/local.sh vocoder` runs these stages to step 20,000 (about 4 h on 2 cores) and samples.
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
    config.diffwave.update(dict(mel_hop=64, mel_n_fft=256))
    config.data.audio_length = 4096  # the mel frames (hop 64) must tile the clip
  return config
