"""Sample-quality metrics on network features: Frechet distance (FID), Inception Score, KID;
feature statistics files; a batched feature extractor sharded over all devices, with a cache.

The metrics take features and logits as numpy arrays and compute in float64 on the host.
"""

import io
import os
import re
import warnings
import zipfile
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

import jax
import numpy as np
import scipy.linalg
import scipy.special
import scipy.stats
from absl import logging
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdiff import compute as compute_lib
from jdiff import errors
from jdiff import files
from jdiff import progress
from jdiff.evaluation import cache_dir

# ----------------------------------------------------------------------------------------------
# Frechet distance


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(mean [D], covariance [D, D]) of features [N, D], in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"features must be [N >= 2, D], got shape {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)) between two Gaussians.

  As in the reference FID code: if the product is singular (scipy warns) or its square root is
  not finite, eps * I is added to both covariances; an imaginary part from numerical error is dropped when
  below 1e-3 on the diagonal, and is an error otherwise.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  singular = any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)
  if singular or not np.isfinite(covmean).all():
    offset = np.eye(len(mu1)) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    largest_imaginary = np.max(np.abs(np.diagonal(covmean).imag))
    if largest_imaginary > 1e-3:
      raise ValueError(f"matrix square root has an imaginary component of {largest_imaginary}")
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
  """Frechet distance between the Gaussians fitted to two feature sets (FID for pool3 features)."""
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def save_statistics(path: str, mu: np.ndarray, sigma: np.ndarray, fid_preprocessing: str = "") -> None:
  """Saves statistics as .npz with keys `mu` and `sigma`, the format of the widely shared
  precomputed FID statistics files (TTUR, pytorch-fid), plus `fid_preprocessing` (a string
  array; readers of that format ignore it) when given."""
  extra = {"fid_preprocessing": np.array(fid_preprocessing)} if fid_preprocessing else {}
  files.save_npz(path, mu=mu, sigma=sigma, **extra)  # a killed run leaves the old file whole


def statistics_preprocessing(path: str) -> Optional[str]:
  """The FID preprocessing convention a statistics file records (save_statistics), or None."""
  stored = files.load_npz(path)
  return str(stored["fid_preprocessing"]) if "fid_preprocessing" in stored else None


def load_statistics(path: str, dim: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from an .npz with keys `mu` and `sigma`, in float64.

  Raises ValueError (one line) unless mu is [D] and sigma [D, D] (D = dim when given), both
  finite. Errors of reading the file itself (missing, not an archive) pass through.
  """
  content = epath.Path(path).read_bytes()  # a missing or unreadable file is an OSError
  if not zipfile.is_zipfile(io.BytesIO(content)):
    raise ValueError(f"{path} is not an .npz archive (expected one with the keys 'mu' and 'sigma')")
  with np.load(io.BytesIO(content)) as f:
    if "mu" not in f or "sigma" not in f:
      raise ValueError(f"{path} lacks the keys 'mu' and 'sigma' (has {sorted(f.keys())})")
    mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
  size = dim if dim is not None else (len(mu) if mu.ndim == 1 else None)
  if size is None or mu.shape != (size,) or sigma.shape != (size, size):
    expected = f"({dim},) and ({dim}, {dim})" if dim is not None else "[D] and [D, D]"
    raise ValueError(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}; "
                     f"expected {expected}")
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    raise ValueError(f"{path}: mu or sigma holds NaN or infinite values; expected finite statistics")
  return mu, sigma


# ----------------------------------------------------------------------------------------------
# Inception Score


def inception_score(logits: np.ndarray, num_splits: int = 10) -> Tuple[float, float]:
  """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y))), p(y) the split's mean prediction.

  The softmax runs over all columns given: for the FID Inception network that is all 1008
  logits, as the original IS code (improved-gan) and TF-GAN do (torch-fidelity likewise). The
  original code omits the fc bias and TF-GAN keeps it; we keep it (the network's fc output).
  Splits are consecutive slices, as in the original code.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or len(logits) < num_splits:
    raise ValueError(f"logits must be [N >= num_splits, classes], got shape {logits.shape}")
  log_p = scipy.special.log_softmax(logits, axis=1)
  scores = []
  for i in range(num_splits):
    part = log_p[i * len(log_p) // num_splits:(i + 1) * len(log_p) // num_splits]
    log_marginal = scipy.special.logsumexp(part, axis=0) - np.log(len(part))
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------------------
# Kernel Inception Distance (Binkowski et al. 2018)


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 between samples x [m, d] and y [n, d] with k(a, b) = (a.b / d + 1)^3."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, n, dim = len(x), len(y), x.shape[1]
  k_xx = (x @ x.T / dim + 1) ** 3
  k_yy = (y @ y.T / dim + 1) ** 3
  k_xy = (x @ y.T / dim + 1) ** 3
  # Dropping the diagonals k(x_i, x_i) is what makes the estimate unbiased.
  mean_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
  mean_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
  return float(mean_xx + mean_yy - 2 * k_xy.mean())


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> Tuple[float, float]:
  """(mean, std) of polynomial_mmd2_unbiased over random subsets (each drawn without
  replacement), the reference protocol: 100 subsets of 1000 (fewer if a set is smaller)."""
  features1, features2 = np.asarray(features1), np.asarray(features2)
  subset_size = min(subset_size, len(features1), len(features2))
  if subset_size < 2:
    raise ValueError("KID needs at least two samples in each set")
  rng = np.random.default_rng(seed)
  values = [polynomial_mmd2_unbiased(features1[rng.choice(len(features1), subset_size, replace=False)],
                                     features2[rng.choice(len(features2), subset_size, replace=False)])
            for _ in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values))


def kid_with_interval(features1: np.ndarray, features2: np.ndarray, num_blocks: int = 10,
                      seed: int = 0) -> Dict[str, object]:
  """KID with an uncertainty that counts both finite sets: each set is shuffled and split into
  `num_blocks` disjoint blocks, block i of one against block i of the other gives an unbiased
  MMD^2 (polynomial_mmd2_unbiased), and those independent estimates give the mean, its
  standard error (std / sqrt(blocks)) and a 95% Student-t interval.

  The reference protocol's "std" (kernel_inception_distance) is the spread over subsets that,
  when a set has fewer than subset_size samples, all hold every sample of it: it says nothing
  about how the score would move with another draw of that set. This interval does: over
  repeated draws from one distribution it covers 0 about 95% of the time (tests/test_evaluation.py).
  Fewer blocks are used when a set has fewer than 2 * num_blocks samples.
  """
  features1, features2 = np.asarray(features1), np.asarray(features2)
  num_blocks = min(num_blocks, len(features1) // 2, len(features2) // 2)
  if num_blocks < 2:
    raise ValueError("a KID interval needs at least 4 samples in each set")
  rng = np.random.default_rng(seed)
  blocks1 = np.array_split(rng.permutation(len(features1)), num_blocks)
  blocks2 = np.array_split(rng.permutation(len(features2)), num_blocks)
  values = np.array([polynomial_mmd2_unbiased(features1[a], features2[b])
                     for a, b in zip(blocks1, blocks2)])
  mean, stderr = float(values.mean()), float(values.std(ddof=1) / np.sqrt(num_blocks))
  half_width = float(scipy.stats.t.ppf(0.975, num_blocks - 1)) * stderr
  return {"estimate": mean, "stderr": stderr, "ci95": [mean - half_width, mean + half_width],
          "num_blocks": int(num_blocks),
          "block_size": int(min(min(len(a), len(b)) for a, b in zip(blocks1, blocks2)))}


# ----------------------------------------------------------------------------------------------
# Feature extraction


def data_mesh() -> Mesh:
  """A 1-D mesh over all devices (of all processes) with axis 'data'."""
  return Mesh(np.array(jax.devices()), ("data",))


def _fixed_size_batches(images, batch_size: int):
  """Yields (batch of exactly batch_size rows, number of real rows); the last one is zero-padded,
  so one compiled function serves every batch."""
  if isinstance(images, (np.ndarray, jax.Array)):
    array = images
    images = (array[i:i + batch_size] for i in range(0, len(array), batch_size))
  pending, pending_rows = [], 0
  for chunk in images:
    chunk = np.asarray(chunk)
    while len(chunk):
      take = min(batch_size - pending_rows, len(chunk))
      pending.append(chunk[:take])
      pending_rows += take
      chunk = chunk[take:]
      if pending_rows == batch_size:
        yield np.concatenate(pending), batch_size
        pending, pending_rows = [], 0
  if pending_rows:
    batch = np.concatenate(pending)
    padding = np.zeros((batch_size - pending_rows,) + batch.shape[1:], batch.dtype)
    yield np.concatenate([batch, padding]), pending_rows


def extract_features(apply_fn: Callable, variables, images: Union[np.ndarray, Iterable[np.ndarray]],
                     batch_size: int = 200, num_images: Optional[int] = None, what: str = ""):
  """apply_fn(variables, batch) over all images, batches sharded over all devices on a 'data'
  mesh axis (variables replicated), under jax.jit.

  images: an array [N, ...] or an iterable of batches (e.g. a sampler's output), any batch
  sizes; they are regrouped into batches of batch_size (rounded up to a multiple of the device
  count). In a multi-process run every process passes the same images. apply_fn should be a
  module-level function so that repeated calls reuse its compilation. Returns apply_fn's output
  structure with numpy leaves holding the results for all N images in order.
  With `what` set, progress (rate, ETA) is logged under that name; the ETA needs N, known for
  an array and given as num_images for an iterable.
  """
  mesh = data_mesh()
  batch_size = -(-batch_size // mesh.size) * mesh.size
  if isinstance(images, (np.ndarray, jax.Array)):
    num_images = len(images)
  report = (progress.batches(f"{what} ({batch_size} images a batch)", -(-num_images // batch_size))
            if what and num_images else None)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
  # Outputs are small (features), so they are gathered onto every device inside the program.
  run = compute_lib.for_backend().jit(apply_fn, in_shardings=(replicated, batch_sharding),
                        out_shardings=replicated)
  variables = jax.device_put(variables, replicated)
  outputs = []
  for batch, num_real in _fixed_size_batches(images, batch_size):
    errors.raise_if_stop_requested()  # a signal that Python delivered somewhere it was swallowed
    result = run(variables, jax.device_put(batch, batch_sharding))
    outputs.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:num_real], result))
    if report:
      report(len(outputs))
  if not outputs:
    raise ValueError("no images to extract features from")
  return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outputs)


def cached_features(name: str, compute: Callable[[], Mapping[str, np.ndarray]],
                    directory: str = "") -> Dict[str, np.ndarray]:
  """The arrays compute() returns, saved to <directory>/features/<name>.npz on first use and
  loaded from there afterwards (one log line says so). name identifies the data (its content
  included) and the network, e.g. "cifar10-train-32px3c-<hash>-fid_inception"; directory
  defaults to jdiff.evaluation.cache_dir(). A damaged cache file is reported in one warning and
  computed again."""
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
    raise ValueError(f"feature cache name {name!r} may only hold letters, digits, '_', '.' and '-'")
  path = os.path.join(directory or cache_dir(), "features", name + ".npz")
  if jax.process_index() == 0:
    files.remove_partials(os.path.dirname(path))
  cached = files.load_npz_cache(path)
  if cached is not None:
    return cached
  features = {key: np.asarray(value) for key, value in compute().items()}
  if jax.process_index() == 0:
    try:
      files.save_npz(path, **features)
    except files.WorkdirError as e:  # a cache that cannot be written costs time, not the result
      logging.warning("%s; going on without caching these features", e)
  return features
