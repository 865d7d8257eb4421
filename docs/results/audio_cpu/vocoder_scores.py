"""Scores a mel-conditioned DiffWave's samples against the clips whose mels it was given.

  python docs/results/audio_cpu/vocoder_scores.py --config=configs/sc09_vocoder_cpu.py \
      --workdir=workdirs/sc09_vocoder_cpu --out=vocoder_scores.json

Reads <workdir>/samples/samples.npz (from --mode=sample: sample i is conditioned on the mel of
clip i of sampling.mel_split) and reports, with jdiff's SC09 classifier (not the papers'):
  - word accuracy: the classifier's digit for each sample against the digit of its source clip,
    beside its accuracy on the source clips themselves at the same sample rate (an upper bound)
    and its held-out accuracy on real 8 kHz clips;
  - envelope correlation: Pearson r between the 32 ms RMS envelopes of each sample and its source
    clip (speech has a word-shaped envelope; noise does not), also for a shuffled pairing;
  - SC09-classifier FD of the samples, of as many real clips, and of as many noise clips;
  - voicing (jdiff.audio.periodicity at the config's rate): speech is voiced (periodic); noise
    shaped like the word is not. Per sample and per source clip, and the medians.
With --zoom_png, a picture of 80 ms around each of the first six source clips' loudest moment,
the sample over its source: pitch periods show there and nowhere in a one-second plot.
"""

import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jdiff import audio
from jdiff import conditioning
from jdiff.evaluation import speech_classifier
from jdiff.tools import report

config_flags.DEFINE_config_file("config", None, "The vocoder's config file.")
flags.DEFINE_string("workdir", None, "Where it was trained and sampled.")
flags.DEFINE_string("out", "", "JSON file for the scores (default: print only).")
flags.DEFINE_string("zoom_png", "", "PNG of 80 ms of each sample beside its source (optional).")


def rms_envelope(waves: np.ndarray, frame: int) -> np.ndarray:
  """[N, L] -> [N, L // frame] root mean square per frame."""
  usable = waves[:, :waves.shape[1] // frame * frame]
  return np.sqrt(np.mean(usable.reshape(len(waves), -1, frame) ** 2, axis=-1))


def envelope_correlations(first: np.ndarray, second: np.ndarray, frame: int) -> np.ndarray:
  return np.array([np.corrcoef(a, b)[0, 1] for a, b in
                   zip(rms_envelope(first, frame), rms_envelope(second, frame))])


def save_zoom_png(samples: np.ndarray, clips: np.ndarray, rate: int, path: str,
                  count: int = 6, seconds: float = 0.08) -> None:
  """80 ms of sample i and source clip i around the source's loudest 80 ms, each scaled to its
  own peak there (the shapes matter, not the loudness)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  width = int(seconds * rate)
  count = min(count, len(samples))
  fig = Figure(figsize=(10, 1.6 * count))
  axes = fig.subplots(count, 1, squeeze=False)[:, 0]
  for i, axis in enumerate(axes):
    energy = np.convolve(clips[i] ** 2, np.ones(width), mode="valid")
    start = int(np.argmax(energy))
    millis = (start + np.arange(width)) / rate * 1000.0
    for wave, label in ((clips[i], "source clip"), (samples[i], "sample")):
      window = wave[start:start + width]
      axis.plot(millis, window / max(np.max(np.abs(window)), 1e-9), linewidth=0.8, label=label)
    axis.set_ylabel(f"#{i}", fontsize=8)
  axes[0].legend(loc="upper right", fontsize=8)
  axes[-1].set_xlabel("milliseconds")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=80)


def main(_):
  config = flags.FLAGS.config
  rate = config.data.sample_rate
  samples = np.load(f"{flags.FLAGS.workdir}/samples/samples.npz")["images"][..., 0]
  count = len(samples)
  clips = conditioning.conditioning_clips(config, count)[:count, :, 0]
  _, words = audio.read_folder(config.data.path, words=config.data.words,
                               split=config.sampling.mel_split, sample_rate=rate,
                               length=config.data.audio_length)
  labels = np.array([audio.DIGITS.index(word) for word in words[:count]])
  scorer = speech_classifier.Scorer(config.data.path)
  samples_8k = speech_classifier.to_classifier_rate(samples, rate)
  clips_8k = speech_classifier.to_classifier_rate(clips, rate)
  frame = int(0.032 * rate)
  sample_floats, clip_floats = audio.to_float(samples), audio.to_float(clips)
  matched = envelope_correlations(sample_floats, clip_floats, frame)
  shuffled = envelope_correlations(sample_floats, np.roll(clip_floats, 1, axis=0), frame)
  anchors = scorer.anchors(count)
  result = {
      "num_samples": count, "sample_rate": rate, "words": sorted(set(words[:count])),
      "word_accuracy_samples": speech_classifier.accuracy(scorer.variables, samples_8k, labels),
      "word_accuracy_source_clips": speech_classifier.accuracy(scorer.variables, clips_8k, labels),
      "classifier_held_out_accuracy": scorer.held_out_accuracy,
      "envelope_r_median": float(np.median(matched)),
      "envelope_r_shuffled_median": float(np.median(shuffled)),
      "voicing_per_sample": np.round(audio.periodicity(samples, rate), 3).tolist(),
      "voicing_per_source_clip": np.round(audio.periodicity(clips, rate), 3).tolist(),
      "samples": scorer(samples, rate), "source_clips": scorer(clips, rate),
      "anchor_real": anchors["real"], "anchor_noise": anchors["noise"],
  }
  if flags.FLAGS.zoom_png:
    save_zoom_png(sample_floats, clip_floats, rate, flags.FLAGS.zoom_png)
  print(json.dumps(result, indent=1))
  if flags.FLAGS.out:
    report.write_json(flags.FLAGS.out, result)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
