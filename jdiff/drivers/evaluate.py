"""--mode=evaluate: N samples from the latest checkpoint with the configured sampler, scored.

  <workdir>/eval/<name>/step_<checkpoint step>/
    samples/batch_00000.npz ...  uint8 batches; a restarted evaluation makes only missing ones
    grid.png                     the first 256 samples
    metrics.json                 the scores, the sampler, its cost (network evaluations, seconds)
  TensorBoard scalars eval/<name>/<metric> at the checkpoint step, in <workdir>.

Metrics (config.evaluation.metrics): fid, is, kid on the FID Inception-v3 network against the
reference (a precomputed mu/sigma .npz, or computed from config.data and cached), with the
input preprocessing config.evaluation.fid_preprocessing (recorded in metrics.json and in
reference statistics files; statistics of the other convention are refused). A weight file
without logits (fc all zeros or absent) gives FID and KID only: asking for "is" is an error,
the default metrics drop it with a log line. digits_fd
(jdiff.evaluation.digits_fd, for 8x8-digit-scale work; not Inception FID); bpd (bits/dim of the
data's bpd_split under the VLB, jdiff.drivers.likelihood). sc09_fd (audio configs): the SC09-classifier
FD and IS of jdiff.evaluation.speech_classifier (NOT the papers' FID/IS) against the labelled
clips of config.evaluation.sc09_reference (default data.path), with two anchors scored the same
way at the same count: real clips outside the reference, and Gaussian noise; beside them each
set's voicing (median jdiff.audio.periodicity: whether the clips are voiced, which FD does not
say); audio writes waveforms.png instead of grid.png.

Before any sample is made, check_inputs checks the output folder is writable and loads the
Inception weights and reference statistics the metrics need; a bad one is a one-line
EvaluationError.

--mode=reference_stats writes the reference mu/sigma of config.data for later evaluations.
"""

import dataclasses
import datetime
import hashlib
import json
import os
import time
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath
from jax.experimental import multihost_utils

from jdiff import audio as audio_lib
from jdiff import choices
from jdiff import data as data_lib
from jdiff import errors
from jdiff import files
from jdiff import images as images_lib
from jdiff import parallel
from jdiff import progress
from jdiff.drivers import likelihood
from jdiff.drivers import sample as sample_lib
from jdiff.errors import DataError, EvaluationError
from jdiff.evaluation import cache_dir
from jdiff.evaluation import metrics as metrics_lib

INCEPTION_METRICS = ("fid", "is", "kid")
INCEPTION_POOL3_DIM = 2048  # FID features: reference statistics are mu [2048], sigma [2048, 2048]
GRID_SIZE = 256


def default_name(config, network_evaluations: int) -> str:
  """e.g. "ancestral1000", "ddim50_eta0.0", "dpmpp2m20", "+ _c2" for adaptive depth: the
  sampler's registry label (jdiff/samplers.py)."""
  from jdiff import samplers  # pylint: disable=g-import-not-at-top  (the import block is shared)
  name = samplers.get(config.sampling.name).label(config.sampling, network_evaluations)
  if config.depth.power > 0:
    name += f"_c{config.depth.power:g}"
  if config.surrogate.kind != "none":
    name += f"_{config.surrogate.kind}-tmid{config.surrogate.t_mid}"
  return name


def curve_name(config) -> str:
  """The sampler without its step count: trade-off plots join runs with the same curve name."""
  from jdiff import samplers  # pylint: disable=g-import-not-at-top  (the import block is shared)
  curve = samplers.get(config.sampling.name).curve(config.sampling)
  if config.depth.power > 0:
    curve += f" c={config.depth.power:g}"
  if config.surrogate.kind != "none":
    curve += f" +{config.surrogate.kind}"
  return curve


# ----------------------------------------------------------------------------------------------
# Samples


def samples_signature(config, generator) -> dict:
  """What stored samples depend on: the checkpoint (step and a hash of its EMA params, so a new
  model trained in the same workdir is told apart) and every config field that changes samples.
  A restart with a different signature never mixes in, or scores, the old samples."""
  signature = {"checkpoint": {"step": generator.checkpoint_step,
                              "params_sha256": generator.parameter_hash()},
               "sampling": config.sampling.to_dict(), "diffusion": config.diffusion.to_dict(),
               "model": config.model.to_dict(), "depth": config.depth.to_dict(),
               "surrogate": config.surrogate.to_dict(), "seed": config.seed,
               "batch_size": generator.batch_size, "sample_shape": list(generator.image_shape)}
  if generator.cond:  # conditioned samples follow their conditioning (a vocoder's clips)
    signature["conditioning_data"] = config.data.to_dict()
  return json.loads(json.dumps(signature))  # as stored: tuples become lists


def _differences(stored, current, prefix: str = "") -> list:
  """Dotted names of the fields where two signatures differ."""
  if not (isinstance(stored, dict) and isinstance(current, dict)):
    return [] if stored == current else [prefix or "(all)"]
  names = []
  for key in sorted(set(stored) | set(current)):
    names += _differences(stored.get(key), current.get(key), f"{prefix}.{key}" if prefix else key)
  return names


def _set_aside(out_dir: str, why: str) -> None:
  """Moves an evaluation folder of other samples to <out_dir>.replaced-<UTC time> (process 0)."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
  target = f"{out_dir}.replaced-{stamp}"
  if jax.process_index() == 0:
    files.move(out_dir, target)
  logging.warning("evaluate: %s %s; moved it to %s and sampling anew", out_dir, why, target)


def _stored_batch(path: str, batch_size: int) -> Optional[Tuple[np.ndarray, float]]:
  """(images, seconds) of a whole stored sample batch; None when absent or damaged (a damaged
  one is reported, and made again)."""
  if not files.exists(path):
    return None
  try:
    stored = files.load_npz(path)
    images, seconds = stored["images"], float(stored["seconds"])
  except Exception as e:  # pylint: disable=broad-except  (zip, zlib, key and pickle errors)
    logging.warning("evaluate: sample batch %s is damaged (%s: %s); making it again", path,
                    type(e).__name__, e)
    return None
  if len(images) != batch_size or not np.isfinite(seconds):
    logging.warning("evaluate: sample batch %s does not hold %d samples; making it again", path,
                    batch_size)
    return None
  return images, seconds


def _stored_signature(signature_path: str) -> Optional[dict]:
  """sampler.json's content; None (with a warning) when it is unreadable."""
  try:
    return json.loads(files.read_text(signature_path))
  except (OSError, ValueError) as e:
    logging.warning("evaluate: %s is damaged (%s: %s)", signature_path, type(e).__name__, e)
    return None


def generate_samples(config, generator: sample_lib.Generator, out_dir: str) -> Tuple[np.ndarray, dict]:
  """config.evaluation.num_samples uint8 samples, batches kept in <out_dir>/samples/; returns
  (samples, timing) where timing has the measured seconds per sample (compile excluded) and the
  samples' signature.

  Stored batches are used only when <out_dir>/sampler.json records the same signature
  (samples_signature); otherwise the folder is moved aside whole and sampling starts anew.
  """
  sample_dir = os.path.join(out_dir, "samples")
  signature_path = os.path.join(out_dir, "sampler.json")
  signature = samples_signature(config, generator)
  if jax.process_index() == 0:
    files.remove_partials(out_dir)
    files.remove_partials(sample_dir)
  if files.exists(signature_path):
    stored = _stored_signature(signature_path)
    if stored != signature:
      why = ("holds samples whose sampler.json is unreadable" if stored is None else
             "holds samples of another checkpoint or sampler (differs in " +
             ", ".join(_differences(stored, signature)[:6]) + ")")
      multihost_utils.sync_global_devices("jdiff evaluate: read sampler.json")
      _set_aside(out_dir, why)
      multihost_utils.sync_global_devices("jdiff evaluate: old samples set aside")
  elif files.listdir(sample_dir):
    multihost_utils.sync_global_devices("jdiff evaluate: read sampler.json")
    _set_aside(out_dir, "holds samples without a sampler.json")
    multihost_utils.sync_global_devices("jdiff evaluate: old samples set aside")
  num_batches = -(-config.evaluation.num_samples // generator.batch_size)
  paths = [os.path.join(sample_dir, f"batch_{i:05d}.npz") for i in range(num_batches)]
  batches = [_stored_batch(path, generator.batch_size) for path in paths]  # (images, seconds)
  missing = [i for i, batch in enumerate(batches) if batch is None]
  # Every process must see the same `missing` before process 0 writes anything.
  multihost_utils.sync_global_devices("jdiff evaluate: listed sample batches")
  if jax.process_index() == 0:
    files.write_json(signature_path, signature)

  compile_s = generator.compile() if missing else 0.0
  if num_batches > len(missing):
    logging.info("evaluate: %d of %d sample batches kept from before (%s)",
                 num_batches - len(missing), num_batches, sample_dir)
  report = progress.batches("evaluate: sample batches", len(missing))
  done = 0
  try:
    for done, i in enumerate(missing):
      errors.raise_if_stop_requested()
      batch_start = time.perf_counter()
      images = generator.sample(i)
      seconds = time.perf_counter() - batch_start
      if jax.process_index() == 0:
        files.save_npz(paths[i], images=images, seconds=seconds)  # fsynced, then renamed
      batches[i] = images, seconds
      report(done + 1)
    done = len(missing)
    errors.raise_if_stop_requested()
  except (KeyboardInterrupt, errors.StopRequested) as e:
    finished = num_batches - len(missing) + done
    raise errors.Interrupted(
        errors.signal_name(e),
        f"stopped by {errors.signal_name(e)}: {finished} of {num_batches} sample batches are "
        f"kept in {sample_dir}; run the same command to continue from them") from None
  multihost_utils.sync_global_devices("jdiff evaluate: sample batches written")

  seconds = [batch_seconds for _, batch_seconds in batches]
  samples = np.concatenate([images for images, _ in batches])[:config.evaluation.num_samples]
  timing = {"seconds_per_sample": float(np.sum(seconds)) / (num_batches * generator.batch_size),
            "compile_s": compile_s, "batches_generated_now": len(missing),
            "batches_kept": num_batches - len(missing), "samples_signature": signature}
  return samples, timing


# ----------------------------------------------------------------------------------------------
# Reference features and statistics


def _content_fingerprint(path: str) -> list:
  """[relative path, size, modification time] of a file, or of every file under a folder: what
  changes when the data is replaced or edited in place (local or on an object store)."""
  def size_and_time(file: epath.Path):
    if files.is_remote(path):
      stat = file.stat()
      return [stat.length, stat.mtime]
    stat = os.stat(file)  # nanoseconds: a file rewritten within the same second still differs
    return [stat.st_size, stat.st_mtime_ns]
  root_path = epath.Path(path)
  if not root_path.is_dir():
    return [[root_path.name, *size_and_time(root_path)]]
  entries = []
  for root, _, names in root_path.walk():
    for name in names:
      entries.append([os.path.relpath(os.fspath(root / name), path), *size_and_time(root / name)])
  return sorted(entries)


def _data_key(config, split: str) -> str:
  """Names a data set's cached features and statistics: source, split, size, and a hash of every
  field that selects the data (path, npz_key, TFDS data_dir) and, for local files, of their
  content's size and modification time, so replacing the data never reuses old features."""
  data = config.data
  key = f"{data.source}-{split}-{data.image_size}px{data.num_channels}c"
  selection = {}
  if data.source in ("folder", "npz", "idx"):
    path = files.absolute(data.path)
    selection = {"path": path, "content": _content_fingerprint(path) if files.exists(path) else []}
    if data.source == "npz":
      selection["npz_key"] = data.get("npz_key", "")
  elif data.get("data_dir"):
    selection = {"data_dir": files.absolute(data.data_dir)}
  if selection:
    key += "-" + hashlib.sha256(json.dumps(selection, sort_keys=True).encode()).hexdigest()[:12]
  return key


def _load_data(config, split: str) -> np.ndarray:
  data_config = config.data.copy_and_resolve_references()
  data_config.split = split
  return data_lib.load_images(data_config)


def _one_line(error: BaseException) -> str:
  """An exception's message on one line, or its type when the message is empty."""
  return " ".join(str(error).split()) or type(error).__name__


def _inception(config) -> Tuple[dict, str]:
  """(FID Inception variables, a tag naming the weights and the preprocessing in feature cache
  names).

  Any failure to find or read the weight file is an EvaluationError naming
  config.evaluation.inception_weights and the file.
  """
  from jdiff.evaluation import inception, torch_weights  # pylint: disable=g-import-not-at-top
  given = config.evaluation.inception_weights
  field = f"config.evaluation.inception_weights={given!r}"
  try:
    path = torch_weights.fid_inception_weights_path(given)
  except (OSError, RuntimeError) as e:
    raise EvaluationError(f"{field}: {_one_line(e)}") from None
  try:
    # The default download is sha256-checked, so it is the official file; a given file may be
    # anything, so its features are cached under its own hash.
    tag = "fid_inception" + (f"-{torch_weights.file_sha256(path)[:12]}" if given else "")
    tag += f"-{config.evaluation.fid_preprocessing}"
    variables = inception.load_fid_inception_variables(path)
  except Exception as e:  # pylint: disable=broad-except
    # A damaged or foreign file fails in many ways (OSError, zip and pickle errors, KeyError,
    # wrong shapes, ...): each is the same one-line error.
    raise EvaluationError(
        f"{field}: cannot read {path} as the pytorch-fid Inception-v3 weights "
        f"({type(e).__name__}: {_one_line(e)})") from None
  return variables, tag


def resolve_metrics(config, variables) -> Tuple[str, ...]:
  """config.evaluation.metrics, without "is" when the default asks for it and the weights have
  no logits (logged); an explicit request for "is" with such weights is an EvaluationError."""
  from jdiff.evaluation import inception  # pylint: disable=g-import-not-at-top
  wanted = tuple(config.evaluation.metrics)
  if "is" not in wanted or variables is None or inception.has_logits(variables):
    return wanted
  weights = config.evaluation.inception_weights or "the downloaded weights"
  if wanted == choices.DEFAULT_EVALUATION_METRICS:
    kept = tuple(metric for metric in wanted if metric != "is")
    logging.info("evaluate: metrics %s: no Inception Score, as %s: %s", ", ".join(kept),
                 inception.NO_LOGITS, weights)
    return kept
  raise EvaluationError(f"config.evaluation.metrics={wanted!r}: {inception.NO_LOGITS} ({weights}); "
                        "remove 'is'")


def reference_inception_features(config, variables, tag: str, split: str) -> Dict[str, np.ndarray]:
  """{"pool3", "logits"} of the data set's `split`, computed once and cached."""
  from jdiff.evaluation import inception  # pylint: disable=g-import-not-at-top

  def compute():
    images = _load_data(config, split)
    what = f"reference: Inception features of {len(images)} {_data_key(config, split)} images"
    logging.info("%s (%s preprocessing; cached afterwards)", what, config.evaluation.fid_preprocessing)
    pool3, logits = inception.fid_inception_features(
        variables, _float_batches(images), config.evaluation.feature_batch_size,
        config.evaluation.fid_preprocessing, num_images=len(images), what=what)
    return {"pool3": pool3, "logits": logits}
  return metrics_lib.cached_features(f"{_data_key(config, split)}-{tag}", compute)


def _float_batches(images_uint8: np.ndarray, batch_size: int = 1000):
  """[-1, 1] float batches of uint8 images, converted lazily (a data set can be large)."""
  for i in range(0, len(images_uint8), batch_size):
    yield np.asarray(data_lib.to_float(images_uint8[i:i + batch_size]))


def reference_statistics(config, workdir: str) -> str:
  """--mode=reference_stats: mu/sigma of config.data's reference_split on the FID Inception
  network with config.evaluation.fid_preprocessing -> <workdir>/reference_stats/<data key>-<weights>-
  <preprocessing>.npz (the TTUR / pytorch-fid format, keys mu and sigma, plus fid_preprocessing)."""
  split = config.evaluation.reference_split
  out_dir = os.path.join(workdir, "reference_stats")
  if jax.process_index() == 0:  # before minutes of Inception passes, not after
    files.remove_partials(out_dir)
    files.check_writable(out_dir, "reference statistics")
    files.check_writable(os.path.join(cache_dir(), "features"), "feature caches")
  variables, tag = _inception(config)
  try:
    features = reference_inception_features(config, variables, tag, split)["pool3"]
  except (KeyboardInterrupt, errors.StopRequested) as e:
    raise errors.Interrupted(errors.signal_name(e), f"stopped by {errors.signal_name(e)}: nothing "
                             f"written; {out_dir} is as it was") from None
  if len(features) < 2:
    raise DataError(f"config.data ({_data_key(config, split)}): {len(features)} image(s) in split "
                    f"{split!r}; reference statistics need at least 2 (a covariance)")
  path = os.path.join(out_dir, f"{_data_key(config, split)}-{tag}.npz")
  if jax.process_index() == 0:
    metrics_lib.save_statistics(path, *metrics_lib.feature_statistics(features),
                                fid_preprocessing=config.evaluation.fid_preprocessing)
  return path


# ----------------------------------------------------------------------------------------------
# Scores


def _reference_stats(config) -> Tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of config.evaluation.reference_stats, checked: FID pool3 size, finite, made with
  config.evaluation.fid_preprocessing (a file that records none, as TTUR's, is taken as is)."""
  given = config.evaluation.reference_stats
  try:
    stats = metrics_lib.load_statistics(given, dim=INCEPTION_POOL3_DIM)
    recorded = metrics_lib.statistics_preprocessing(given)
  except Exception as e:  # pylint: disable=broad-except
    # Missing, unreadable (zip, pickle, zlib errors), wrong keys, shapes or values.
    raise EvaluationError(
        f"config.evaluation.reference_stats={given!r}: {_one_line(e)} (expected an .npz with mu "
        f"[{INCEPTION_POOL3_DIM}] and sigma [{INCEPTION_POOL3_DIM}, {INCEPTION_POOL3_DIM}], "
        "as --mode=reference_stats writes)") from None
  wanted = config.evaluation.fid_preprocessing
  if recorded is None:
    logging.warning("evaluate: %s records no FID preprocessing; assuming %r (TTUR's files are "
                    "'tf1', pytorch-fid's 'pytorch_fid')", given, wanted)
  elif recorded != wanted:
    raise EvaluationError(
        f"config.evaluation.reference_stats={given!r}: made with fid_preprocessing={recorded!r}, but "
        f"config.evaluation.fid_preprocessing={wanted!r}; FIDs of different conventions are not "
        "comparable (use matching statistics or set the field to match)")
  return stats


def _check_writable(out_dir: str, also_caches: bool) -> None:
  """Process 0 writes and deletes a probe file in out_dir (and in the feature cache folder when
  also_caches); every process raises the one-line error if that failed (so none of them goes on
  to sample alone)."""
  error = ""
  if jax.process_index() == 0:
    try:
      files.check_writable(out_dir, "evaluation outputs")
      if also_caches:
        files.check_writable(os.path.join(cache_dir(), "features"), "feature caches")
    except errors.WorkdirError as e:
      error = str(e)
  failed = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
  if int(failed):
    raise errors.WorkdirError(error or f"cannot write evaluation outputs to {out_dir} (process 0 "
                              "could not write there)")


@dataclasses.dataclass
class EvaluationInputs:
  """What check_inputs loaded, for the scores to use (so nothing is loaded twice)."""
  inception: Optional[Tuple[dict, str]] = None     # (variables, cache tag) for fid / is / kid
  metrics: Tuple[str, ...] = ()                    # resolve_metrics: what will be scored
  reference_stats: Optional[Tuple[np.ndarray, np.ndarray]] = None  # (mu, sigma) for fid
  sc09_scorer: Any = None                          # speech_classifier.Scorer for sc09_fd


def check_inputs(config, out_dir: str) -> EvaluationInputs:
  """Checks (and loads) everything the evaluation needs before any sample is made: the output
  folder is writable, the reference statistics file (if FID uses one) and the Inception weights
  (if fid / is / kid are wanted), and that the weights have logits if "is" is asked for. Each
  failure is a one-line EvaluationError."""
  wanted = config.evaluation.metrics
  _check_writable(out_dir, any(metric in wanted for metric in INCEPTION_METRICS))
  inputs = EvaluationInputs()
  if "fid" in wanted and config.evaluation.reference_stats:
    inputs.reference_stats = _reference_stats(config)
  if any(metric in wanted for metric in INCEPTION_METRICS):
    inputs.inception = _inception(config)
  if "sc09_fd" in wanted:
    inputs.sc09_scorer = sc09_scorer(config)
  inputs.metrics = resolve_metrics(config, inputs.inception and inputs.inception[0])
  return inputs


def inception_scores(config, samples_uint8: np.ndarray,
                     inputs: Optional[EvaluationInputs] = None) -> dict:
  """FID / IS / KID (those in config.evaluation.metrics) of the samples; `inputs` from
  check_inputs (loaded here when not given)."""
  from jdiff.evaluation import inception  # pylint: disable=g-import-not-at-top
  inputs = inputs or EvaluationInputs()
  variables, tag = inputs.inception or _inception(config)
  wanted = inputs.metrics or resolve_metrics(config, variables)
  pool3, logits = inception.fid_inception_features(
      variables, _float_batches(samples_uint8), config.evaluation.feature_batch_size,
      config.evaluation.fid_preprocessing, num_images=len(samples_uint8),
      what=f"evaluate: Inception features of {len(samples_uint8)} samples")
  scores = {"fid_preprocessing": config.evaluation.fid_preprocessing,
            "inception_weights": config.evaluation.inception_weights or "pytorch-fid download"}
  split = config.evaluation.reference_split
  if "fid" in wanted:
    if config.evaluation.reference_stats:
      reference = inputs.reference_stats or _reference_stats(config)
      scores["fid_reference"] = files.absolute(config.evaluation.reference_stats)
    else:
      reference = metrics_lib.feature_statistics(
          reference_inception_features(config, variables, tag, split)["pool3"])
      scores["fid_reference"] = f"{_data_key(config, split)} (computed, cached)"
    scores["fid"] = metrics_lib.frechet_distance(*metrics_lib.feature_statistics(pool3), *reference)
  if "is" in wanted:
    num_splits = min(config.evaluation.is_splits, len(logits))
    scores["inception_score"], scores["inception_score_std"] = metrics_lib.inception_score(
        logits, num_splits)
    scores["inception_score_splits"] = num_splits
  if "kid" in wanted:
    reference_pool3 = reference_inception_features(config, variables, tag, split)["pool3"]
    scores["kid"], scores["kid_std"] = metrics_lib.kernel_inception_distance(
        pool3, reference_pool3, config.evaluation.kid_subsets, config.evaluation.kid_subset_size,
        seed=config.seed)
    scores["kid_subset_size"] = min(config.evaluation.kid_subset_size, len(pool3),
                                    len(reference_pool3))
    # kid_std above is the protocol's spread over subsets, not an error of the finite sets;
    # this interval is (metrics.kid_with_interval).
    if min(len(pool3), len(reference_pool3)) >= 4:
      scores["kid_interval"] = metrics_lib.kid_with_interval(pool3, reference_pool3,
                                                             seed=config.seed)
  return scores


def sc09_reference(config) -> str:
  """config.evaluation.sc09_reference, or data.path for a folder / archive source."""
  given = config.evaluation.sc09_reference
  if given:
    return given
  if config.data.source in ("folder", "sc09") and config.data.path:
    return config.data.path
  raise EvaluationError(
      f"config.evaluation.sc09_reference='': sc09_fd needs labelled SC09 clips (a folder or .tar.gz "
      f"with zero..nine folders) and data.source={config.data.source!r} is not a folder; set it")


def sc09_scorer(config):
  """The SC09 classifier (trained once and cached) of sc09_reference(config); any failure to read
  the clips is a one-line EvaluationError."""
  from jdiff.evaluation import speech_classifier  # pylint: disable=g-import-not-at-top
  path = sc09_reference(config)
  try:
    scorer = speech_classifier.Scorer(path)
  except DataError as e:
    raise EvaluationError(f"config.evaluation.sc09_reference={path!r}: {_one_line(e)}") from None
  logging.info("evaluate: SC09 classifier held-out accuracy %.3f (%d train / %d held-out clips)",
               scorer.held_out_accuracy, scorer.num_train, scorer.num_held_out)
  return scorer


def sc09_scores(config, samples_int16: np.ndarray, scorer) -> dict:
  """The SC09-classifier FD / IS of the samples and of the real and noise anchors at the same
  count (the real anchor has at most as many clips as the reference leaves out)."""
  from jdiff.evaluation import speech_classifier  # pylint: disable=g-import-not-at-top
  fd, inception_score = speech_classifier.FD_NAME, speech_classifier.IS_NAME
  voicing = speech_classifier.VOICING_NAME
  scores = scorer(samples_int16, config.data.sample_rate)
  anchors = scorer.anchors(len(samples_int16))
  return {"sc09_fd": scores[fd], "sc09_is": scores[inception_score],
          "sc09_fd_real_anchor": anchors["real"][fd], "sc09_is_real_anchor": anchors["real"][inception_score],
          "sc09_real_anchor_clips": int(min(len(samples_int16), len(scorer.real_others))),
          "sc09_fd_noise_anchor": anchors["noise"][fd],
          "sc09_is_noise_anchor": anchors["noise"][inception_score],
          "voicing": scores[voicing], "voicing_real_anchor": anchors["real"][voicing],
          "voicing_noise_anchor": anchors["noise"][voicing],
          "sc09_metric": f"{fd} / {inception_score}: not the papers' FID / IS",
          "sc09_reference": files.absolute(sc09_reference(config)),
          "sc09_classifier_held_out_accuracy": scorer.held_out_accuracy}


def scoring_signature(config, metrics) -> dict:
  """What the scores of a set of samples depend on besides the samples: the metrics, every
  evaluation field and the reference data (its path made absolute), as metrics.json stores it."""
  data = config.data.to_dict()
  data["path"] = files.absolute(data["path"]) if data.get("path") else data.get("path")
  return json.loads(json.dumps({"metrics": list(metrics), "evaluation": config.evaluation.to_dict(),
                                "data": data}))


def _kept_results(out_dir: str, scoring: dict, signature: dict) -> Optional[dict]:
  """The metrics.json in out_dir when it scored these very samples (signature) as `scoring`
  says, else None (an unreadable file is reported and scored again)."""
  path = os.path.join(out_dir, "metrics.json")
  if not files.exists(path):
    return None
  try:
    results = json.loads(files.read_text(path))
  except (OSError, ValueError) as e:
    logging.warning("evaluate: %s is damaged (%s: %s); scoring again", path, type(e).__name__, e)
    return None
  if not isinstance(results, dict):
    return None
  same = results.get("scoring") == scoring and results.get("samples_signature") == signature
  return results if same else None


def _remove_empty_folders(folder: str, down_to: str) -> None:
  """Removes folder and its parents while empty, stopping at down_to (which existed before)."""
  if files.is_remote(folder):
    return  # an object store has no empty folders
  folder, down_to = os.path.abspath(folder), os.path.abspath(down_to)
  while folder != down_to and folder.startswith(down_to + os.sep):
    try:
      os.rmdir(folder)
    except OSError:
      return
    folder = os.path.dirname(folder)


def _existing_ancestor(folder: str) -> str:
  if files.is_remote(folder):
    return folder
  folder = os.path.abspath(folder)
  while not os.path.exists(folder) and os.path.dirname(folder) != folder:
    folder = os.path.dirname(folder)
  return folder


def evaluate(config, workdir: str) -> dict:
  """Generates (or reuses) the samples and scores them; returns the metrics.json contents."""
  mesh = parallel.make_mesh()
  generator = sample_lib.build_generator(config, workdir, mesh, config.evaluation.num_samples)
  name = config.evaluation.name or default_name(config, generator.network_evaluations)
  out_dir = os.path.join(workdir, "eval", name, f"step_{generator.checkpoint_step}")
  logging.info("evaluate: %s on checkpoint step %d -> %s", name, generator.checkpoint_step, out_dir)
  # Bad inputs fail here, in one line, not after minutes of sampling; a refused evaluation
  # leaves no empty folder behind.
  existed = _existing_ancestor(out_dir)
  try:
    inputs = check_inputs(config, out_dir)
  except errors.JdiffError:
    if jax.process_index() == 0:
      _remove_empty_folders(out_dir, existed)
    raise
  samples, timing = generate_samples(config, generator, out_dir)
  scoring = scoring_signature(config, inputs.metrics)
  if timing["batches_generated_now"] == 0:
    kept = _kept_results(out_dir, scoring, timing["samples_signature"])
    if kept is not None:  # a table run again: its rows' Inception passes are not redone
      logging.info("evaluate: %s: samples and scores of checkpoint step %d kept from before (%s)",
                   name, generator.checkpoint_step, os.path.join(out_dir, "metrics.json"))
      return dict(kept, batches_generated_now=0, batches_kept=timing["batches_kept"])
  audio = config.data.kind == "audio"
  grid_path = os.path.join(out_dir, "waveforms.png" if audio else "grid.png")
  if jax.process_index() == 0:
    if audio:
      audio_lib.save_waveforms_png(samples, config.data.sample_rate, grid_path)
    else:
      images_lib.save_grid(samples[:GRID_SIZE], grid_path)

  results = {
      "name": name, "curve": curve_name(config), "checkpoint_step": generator.checkpoint_step,
      "num_samples": int(len(samples)), "network_evaluations": generator.network_evaluations,
      "surrogate_network_evaluations": generator.surrogate_evaluations,
      **timing, "device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
      "sampling": config.sampling.to_dict(), "depth_power": config.depth.power,
      "surrogate": config.surrogate.kind, "grid": grid_path, "scoring": scoring,
  }
  if config.surrogate.kind != "none":
    # Both models' cost in one unit: measured seconds / one full-resolution evaluation's.
    seconds_per_evaluation = generator.seconds_per_evaluation()
    results.update(seconds_per_network_evaluation=seconds_per_evaluation,
                   full_resolution_steps=results["seconds_per_sample"] / seconds_per_evaluation)
  wanted = inputs.metrics
  if any(metric in wanted for metric in INCEPTION_METRICS):
    results.update(inception_scores(config, samples, inputs))
  if "digits_fd" in wanted:
    from jdiff.evaluation import digits_fd  # pylint: disable=g-import-not-at-top
    results["digits_fd"] = digits_fd.digits_frechet_distance(data_lib.to_float(samples))
  if "sc09_fd" in wanted:
    results.update(sc09_scores(config, samples, inputs.sc09_scorer or sc09_scorer(config)))
  if "bpd" in wanted:
    bpd = likelihood.evaluate_bits_per_dim(config, workdir, config.evaluation.bpd_examples,
                                           split=config.evaluation.bpd_split)
    renamed = {"num_examples": "bpd_examples", "split": "bpd_split", "seconds": "bpd_seconds"}
    results.update({renamed.get(key, key): value for key, value in bpd.items()
                    if key not in ("checkpoint_step", "variance_type")})

  scalars = {f"eval/{name}/{key}": value for key, value in results.items()
             if key in ("fid", "inception_score", "kid", "digits_fd", "bits_per_dim",
                        "seconds_per_sample", "sc09_fd", "sc09_is", "voicing")}
  if jax.process_index() == 0:
    files.write_json(os.path.join(out_dir, "metrics.json"), results)
    try:
      writer = metric_writers.create_default_writer(workdir)
      writer.write_scalars(generator.checkpoint_step, scalars)
      writer.close()
    except Exception as e:  # pylint: disable=broad-except  (TensorFlow's file errors)
      # metrics.json holds every score: a full disk here loses only the TensorBoard copy.
      logging.warning("evaluate: could not write TensorBoard scalars to %s (%s: %s); the scores "
                      "are in %s", workdir, type(e).__name__, str(e).splitlines()[0] if str(e)
                      else "", os.path.join(out_dir, "metrics.json"))
  return results
