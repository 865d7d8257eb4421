"""SC09-classifier FD / IS (jdiff): FID- and IS-like scores for spoken digits, on a small CNN.

NOT the numbers of the DiffWave / FastDPM tables: those use a ResNeXt classifier trained on all
of SC09 that is not available offline. Here a small log-mel CNN is trained, deterministically,
in jdiff on whatever labelled SC09 clips it is given (the 100 clips beside the repository, or the
full set), and scores are only comparable with other values made with the same
TRAINING_SETTINGS *and* the same training clips (the cache file name holds both hashes).

  features:  clip -> 8 kHz, 1 s -> log-mel (n_fft 256, hop 128, 40 mels, 20 Hz..4 kHz; the
             transform of jdiff.audio.mel_spectrogram) -> 3 x (conv 3x3, ReLU, 2x2 max-pool;
             16, 32, 64 channels) -> mean over time and frequency: 64 features -> Dense(10).
  FD:        Frechet distance between the features of the samples and of the reference clips.
  IS:        exp(E_x KL(p(y|x) || p(y))) of the classifier's softmax (one split).
  voicing:   the median over clips of jdiff.audio.periodicity at 8 kHz (no classifier): how
             periodic the loud frames are, ~0.85 for real SC09 words, ~0.1 for white noise.
Held-out split: per digit, the last HELD_OUT_PER_WORD clips in file order (never trained on).
"""

import functools
import hashlib
import json
import os
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jdiff import audio
from jdiff import compute as compute_lib
from jdiff import files
from jdiff.evaluation import cache_dir, metrics

FD_NAME = "SC09-classifier FD (jdiff)"
IS_NAME = "SC09-classifier IS (jdiff)"
VOICING_NAME = "voicing (median periodicity)"
CLASSIFIER_RATE = 8000
CLASSIFIER_LENGTH = 8000
MEL = dict(sample_rate=CLASSIFIER_RATE, n_fft=256, hop=128, n_mels=40, fmin=20.0)
TRAINING_SETTINGS = {
    "architecture": "logmel40-cnn16-32-64-10",
    "seed": 0,
    "held_out_per_word": 2,
    "steps": 300,
    "batch_size": 16,
    "learning_rate": 2e-3,
    "max_shift": 800,    # random circular time shift (samples at 8 kHz) as augmentation
    # How the steps run. The weights depend on the program that trains them (rounding grows over
    # 300 Adam steps), so a new program gets a new cache file rather than mixing with old ones.
    "train_loop": "host",  # one jitted step per call (not one lax.scan over all the steps)
}


class SpeechClassifier(nn.Module):
  """[N, 8000] waves at 8 kHz in [-1, 1] -> (features [N, 64], logits [N, 10])."""

  @nn.compact
  def __call__(self, waves):
    x = audio.mel_spectrogram(waves, **MEL)[..., None]  # [N, frames, mels, 1] in [0, 1]
    for channels in (16, 32, 64):
      x = nn.relu(nn.Conv(channels, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    features = jnp.mean(x, axis=(1, 2))
    return features, nn.Dense(len(audio.DIGITS))(features)


def to_classifier_rate(waves, sample_rate: int) -> np.ndarray:
  """[N, L] or [N, L, 1] (int16 or float in [-1, 1]) at sample_rate -> float32 [N, 8000] at 8 kHz."""
  waves = np.asarray(waves)
  waves = waves.reshape(len(waves), -1)
  as_int16 = waves if waves.dtype == np.int16 else audio.to_int16(waves)
  out = np.stack([audio.fit_length(audio.resample(w, sample_rate, CLASSIFIER_RATE),
                                   CLASSIFIER_LENGTH) for w in as_int16])
  return audio.to_float(out)


def labelled_split(waves: np.ndarray, words: Sequence[str], held_out_per_word: int
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(train_waves, train_labels, held_out_waves, held_out_labels): per digit, the last
  held_out_per_word clips (in the given order) are held out."""
  labels = np.array([audio.DIGITS.index(w) for w in words])
  held = np.zeros(len(labels), bool)
  for label in range(len(audio.DIGITS)):
    held[np.flatnonzero(labels == label)[-held_out_per_word:]] = True
  return waves[~held], labels[~held], waves[held], labels[held]


def _apply(variables, waves):
  return SpeechClassifier().apply(variables, waves)


def _train(settings, waves: np.ndarray, labels: np.ndarray) -> dict:
  rng = np.random.default_rng(settings["seed"])
  steps, batch_size = settings["steps"], settings["batch_size"]
  epochs = -(-steps * batch_size // len(waves))
  order = np.concatenate([rng.permutation(len(waves)) for _ in range(epochs)])
  batches = order[:steps * batch_size].reshape(steps, batch_size)
  shifts = rng.integers(-settings["max_shift"], settings["max_shift"] + 1, (steps, batch_size))
  model = SpeechClassifier()
  params = model.init(jax.random.key(settings["seed"]), waves[:1])["params"]
  optimizer = optax.adam(settings["learning_rate"])
  waves, labels = jnp.asarray(waves), jnp.asarray(labels)

  def loss_fn(params, index, shift):
    batch = jax.vmap(jnp.roll)(waves[index], shift)
    _, logits = model.apply({"params": params}, batch)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels[index]).mean()

  # One compiled step called from a host loop, not a lax.scan over the steps: XLA:CPU's
  # convolution gradients inside a loop body run ~18x slower (128 ms against 7 ms a step here;
  # the same as jdiff/cpu/convolutions.py's docstring says of the U-Net).
  @functools.partial(compute_lib.for_backend().jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, index, shift):
    grads = jax.grad(loss_fn)(params, index, shift)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for index, shift in zip(batches, shifts):
    params, opt_state = train_step(params, opt_state, jnp.asarray(index), jnp.asarray(shift))
  return {"params": params}


def _digest(value) -> str:
  return hashlib.sha256(value).hexdigest()[:16]


def speech_classifier(train_waves: np.ndarray, train_labels: np.ndarray, directory: str = "",
                      settings=None) -> dict:
  """Variables of the classifier trained on (train_waves [N, 8000] at 8 kHz, labels), cached as
  <directory>/speech_classifier-<settings hash>-<data hash>.npz (default: jdiff.evaluation.cache_dir()).
  settings: TRAINING_SETTINGS unless given (tests train a shorter one)."""
  settings = settings or TRAINING_SETTINGS
  settings_hash = _digest(json.dumps(settings, sort_keys=True).encode())
  data_hash = _digest(np.ascontiguousarray(train_waves, np.float32).tobytes()
                      + np.asarray(train_labels, np.int64).tobytes())
  path = os.path.join(directory or cache_dir(), f"speech_classifier-{settings_hash}-{data_hash}.npz")
  cached = files.load_npz_cache(path)
  if cached is not None:
    return traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v)
                                         for k, v in cached.items()})
  variables = _train(settings, np.asarray(train_waves, np.float32), train_labels)
  files.save_npz(path, **{"/".join(k): np.asarray(v)
                          for k, v in traverse_util.flatten_dict(variables).items()})
  return variables


def features_and_logits(variables, waves_8k: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(features [N, 64], logits [N, 10]) of waves [N, 8000] at 8 kHz."""
  features, logits = compute_lib.for_backend().jit(_apply)(variables, jnp.asarray(waves_8k, jnp.float32))
  return np.asarray(features, np.float64), np.asarray(logits, np.float64)


def accuracy(variables, waves_8k: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(features_and_logits(variables, waves_8k)[1], axis=1) == labels))


def scores(variables, samples_8k: np.ndarray, reference_8k: np.ndarray) -> dict:
  """{FD_NAME: Frechet distance of the samples' features to the reference's, IS_NAME: ...,
  VOICING_NAME: the samples' median periodicity}."""
  features, logits = features_and_logits(variables, samples_8k)
  reference, _ = features_and_logits(variables, reference_8k)
  return {FD_NAME: metrics.frechet_distance_from_features(features, reference),
          IS_NAME: metrics.inception_score(logits, num_splits=1)[0],
          VOICING_NAME: float(np.median(audio.periodicity(samples_8k, CLASSIFIER_RATE)))}


class Scorer:
  """The classifier of a labelled SC09 folder / archive (digit word folders of WAVs) and its
  reference clips: scorer(samples, sample_rate) -> scores; scorer.held_out_accuracy.

  Reference: every other clip of each digit (in file order); the other half serves the real
  anchor (anchors(n): n real clips not in the reference, and n clips of Gaussian noise). Like
  FID these are biased by the sample count: compare values at equal n.
  """

  def __init__(self, path: str, directory: str = "", settings=None):
    waves, words = audio.read_folder(path, words=audio.DIGITS, split="train",
                                     sample_rate=CLASSIFIER_RATE, length=CLASSIFIER_LENGTH)
    waves = audio.to_float(waves[..., 0])
    train_waves, train_labels, held_waves, held_labels = labelled_split(
        waves, words, (settings or TRAINING_SETTINGS)["held_out_per_word"])
    self.variables = speech_classifier(train_waves, train_labels, directory, settings)
    self.held_out_accuracy = accuracy(self.variables, held_waves, held_labels)
    self.num_train, self.num_held_out = len(train_waves), len(held_waves)
    labels = np.array([audio.DIGITS.index(w) for w in words])
    rank = np.array([np.sum(labels[:i] == labels[i]) for i in range(len(labels))])
    self.reference, self.real_others = waves[rank % 2 == 0], waves[rank % 2 == 1]

  def __call__(self, samples, sample_rate: int) -> dict:
    return scores(self.variables, to_classifier_rate(samples, sample_rate), self.reference)

  def anchors(self, n: int, seed: int = 0) -> dict:
    """{"real": scores of n real clips outside the reference, "noise": of n N(0, 0.1^2) clips}."""
    rng = np.random.default_rng(seed)
    real = self.real_others[rng.permutation(len(self.real_others))[:n]]
    noise = np.clip(rng.normal(0.0, 0.1, (n, CLASSIFIER_LENGTH)), -1, 1).astype(np.float32)
    return {"real": scores(self.variables, real, self.reference),
            "noise": scores(self.variables, noise, self.reference)}
