"""Voicing (jdiff.audio.periodicity, no classifier) of the unconditional CPU config's samples at
step 850 (the sample_*.wav beside this script: 8 clips, 4 kHz, peak-normalised) against its
training clips read as configs/sc09_cpu.py reads them (4 kHz, 4,000 samples, peak 0.9) and 8
clips of Gaussian noise N(0, 0.1^2), all at 4 kHz.

  python docs/results/audio_cpu/voicing_step850.py <SC09 folder or .tar.gz>   # from the repository root
      # the labelled clips the config trained on (here: the 100 SC09 clips); a few seconds

Writes docs/results/audio_cpu/voicing_step850.json.
"""
import glob
import json
import os
import sys

import numpy as np

from jdiff import audio
from jdiff import config_lib

HERE = os.path.dirname(os.path.abspath(__file__))

config = config_lib.load_config("configs/sc09_cpu.py")
config.data.source = "folder"
config.data.path = sys.argv[1]
rate = config.data.sample_rate
real = audio.load_audio(config.data)
sample_files = sorted(glob.glob(os.path.join(HERE, "sample_*.wav")))
samples = []
for path in sample_files:
  file_rate, wave = audio.read_wav(path)
  assert file_rate == rate, (path, file_rate)
  samples.append(wave)
samples = np.stack(samples)
noise = np.clip(np.random.default_rng(0).normal(0.0, 0.1, (len(samples), real.shape[1])), -1, 1)


def voicing(waves):
  per_clip = audio.periodicity(waves, rate)
  return {"median": float(np.median(per_clip)), "min": float(per_clip.min()),
          "max": float(per_clip.max()), "clips": int(len(per_clip)),
          "per_clip": [round(float(v), 4) for v in per_clip]}


results = {"sample_rate": rate, "what": "jdiff.audio.periodicity per clip (median over its loud "
                                        "frames of the normalised autocorrelation peak at 60-400 Hz)",
           "samples_step850": {"files": [os.path.basename(p) for p in sample_files], **voicing(samples)},
           "real_training_clips": {"source": "<100 SC09 clips>", **voicing(real)},
           "noise_N(0,0.1^2)": voicing(noise)}
for name in ("samples_step850", "real_training_clips", "noise_N(0,0.1^2)"):
  row = results[name]
  print(f"{name}: voicing median {row['median']:.3f} ({row['min']:.3f}..{row['max']:.3f}), "
        f"{row['clips']} clips")
with open(os.path.join(HERE, "voicing_step850.json"), "w") as f:
  json.dump(results, f, indent=1)
