"""Digits Frechet Distance: a small-data stand-in for FID for CPU-scale work on 8x8 digits.

NOT the Inception FID: the features are the penultimate layer of a small MLP classifier trained
here, deterministically, on scikit-learn's digits (1797 images of 8x8, values 0..16), and the
reference statistics are those of the classifier's training split. Values are comparable only
with other Digits FD values computed with the same TRAINING_SETTINGS.
"""

import hashlib
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import sklearn.datasets
from flax import traverse_util

from jdiff import compute as compute_lib
from jdiff import files
from jdiff.evaluation import cache_dir, metrics

TRAINING_SETTINGS = {
    "architecture": "mlp256-64-10",
    "seed": 0,
    "held_out_fraction": 0.2,
    "steps": 500,
    "batch_size": 128,
    "learning_rate": 2e-3,
}
DIGITS_SIZE = 8
FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
  """[N, 8, 8, 1] in [-1, 1] -> (penultimate features [N, 64], logits [N, 10])."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(256)(x.reshape(len(x), -1)))
    features = nn.relu(nn.Dense(FEATURE_DIM)(x))
    return features, nn.Dense(10)(features)


def load_digits_split(held_out_fraction: float = TRAINING_SETTINGS["held_out_fraction"],
                      seed: int = TRAINING_SETTINGS["seed"]):
  """(train_images, train_labels, held_out_images, held_out_labels); images [N, 8, 8, 1] float32
  in [-1, 1] (0..16 scaled), split by a fixed permutation."""
  digits = sklearn.datasets.load_digits()
  images = (digits.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[..., None]
  order = np.random.default_rng(seed).permutation(len(images))
  num_held_out = int(round(held_out_fraction * len(images)))
  held_out, train = order[:num_held_out], order[num_held_out:]
  return images[train], digits.target[train], images[held_out], digits.target[held_out]


def _classifier_apply(variables, images):
  return DigitsClassifier().apply(variables, images)


def _train(settings) -> dict:
  train_images, train_labels, _, _ = load_digits_split(settings["held_out_fraction"], settings["seed"])
  rng = np.random.default_rng(settings["seed"])
  # One index table of per-epoch shuffles for all steps, so training is a single scan.
  steps, batch_size = settings["steps"], settings["batch_size"]
  epochs = -(-steps * batch_size // len(train_images))
  order = np.concatenate([rng.permutation(len(train_images)) for _ in range(epochs)])
  batches = order[:steps * batch_size].reshape(steps, batch_size)
  model = DigitsClassifier()
  params = model.init(jax.random.key(settings["seed"]), train_images[:1])["params"]
  optimizer = optax.adam(settings["learning_rate"])
  images, labels = jnp.asarray(train_images), jnp.asarray(train_labels)

  def loss_fn(params, index):
    _, logits = model.apply({"params": params}, images[index])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels[index]).mean()

  def step(carry, index):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, index)
    updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), None

  train = compute_lib.for_backend().jit(
      lambda params, batches: jax.lax.scan(step, (params, optimizer.init(params)), batches))
  (params, _), _ = train(params, jnp.asarray(batches))
  return {"params": params}


def digits_classifier(directory: str = "") -> dict:
  """Variables of the digits classifier, trained once and cached as
  <directory>/digits_classifier-<hash of TRAINING_SETTINGS>.npz (default directory:
  jdiff.evaluation.cache_dir())."""
  settings_hash = hashlib.sha256(json.dumps(TRAINING_SETTINGS, sort_keys=True).encode()).hexdigest()[:16]
  path = os.path.join(directory or cache_dir(), f"digits_classifier-{settings_hash}.npz")
  cached = files.load_npz_cache(path)
  if cached is not None:
    return traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v)
                                         for k, v in cached.items()})
  variables = _train(TRAINING_SETTINGS)
  flat = traverse_util.flatten_dict(variables)
  files.save_npz(path, **{"/".join(k): np.asarray(v) for k, v in flat.items()})
  return variables


def held_out_accuracy(variables) -> float:
  """Classification accuracy on the held-out split (never seen in training)."""
  _, _, images, labels = load_digits_split()
  _, logits = compute_lib.for_backend().jit(_classifier_apply)(variables, images)
  return float(np.mean(np.argmax(np.asarray(logits), axis=1) == labels))


def predicted_classes(variables, images: np.ndarray) -> np.ndarray:
  """The classifier's digit (argmax of its logits) for each image [N, H, W, 1] in [-1, 1]
  (resized to 8x8 by to_digits_size): int [N]."""
  _, logits = compute_lib.for_backend().jit(_classifier_apply)(
      variables, jnp.asarray(to_digits_size(images)))
  return np.argmax(np.asarray(logits), axis=1)


def to_digits_size(images: np.ndarray) -> np.ndarray:
  """[N, H, W, 1] in [-1, 1] -> [N, 8, 8, 1]. Sizes that are multiples of 8 are block-averaged
  (how the digits themselves were made: on-pixel counts over 4x4 blocks of 32x32 bitmaps);
  other sizes are resized with antialiased bilinear interpolation."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] != 1:
    raise ValueError(f"digit images must be grayscale [N, H, W, 1], got shape {images.shape}")
  count, height, width, _ = images.shape
  if height % DIGITS_SIZE == 0 and width % DIGITS_SIZE == 0:
    blocks = images.reshape(count, DIGITS_SIZE, height // DIGITS_SIZE, DIGITS_SIZE, width // DIGITS_SIZE, 1)
    return blocks.mean(axis=(2, 4))
  return np.asarray(jax.image.resize(images, (count, DIGITS_SIZE, DIGITS_SIZE, 1), "linear"))


def digits_features(variables, images: np.ndarray) -> np.ndarray:
  """Penultimate-layer features [N, 64] of digit images [N, H, W, 1] in [-1, 1] (see to_digits_size)."""
  features, _ = metrics.extract_features(_classifier_apply, variables, to_digits_size(images),
                                         batch_size=1000)
  return features


def digits_frechet_distance(images: np.ndarray, directory: str = "") -> float:
  """Digits Frechet Distance of images [N, H, W, 1] in [-1, 1] (N >= 2; resized to 8x8 by
  to_digits_size) against the classifier's training split of the real digits (1437 images).
  Like FID it is biased upwards for small N: compare values at equal N."""
  variables = digits_classifier(directory)
  train_images, _, _, _ = load_digits_split()
  return metrics.frechet_distance_from_features(digits_features(variables, images),
                                                digits_features(variables, train_images))
