"""Progress with rate and ETA for long loops, and the metric writer of the train loops.

Both come from clu (ReportProgress, create_default_writer: TensorBoard + log) where clu and the
TensorFlow it imports are installed; where they are not (the lent GPU machines have neither)
a small stand-in does the same job: the rate / ETA line in the log, and scalars in the log and
in <workdir>/metrics.jsonl. Callers block on a step's outputs before they report it (the rate
counts finished steps, not dispatched ones).
"""

import json
import os
import time
from typing import Callable, Mapping, Optional

from absl import logging


def _clu(module: str):
  """clu.<module>, or None where clu (or the TensorFlow it imports) is missing."""
  try:
    return __import__(f"clu.{module}", fromlist=["_"])
  except ImportError:
    return None


class _LogAndJsonWriter:
  """write_scalars / flush of clu's metric writers, to the log and <workdir>/metrics.jsonl."""

  def __init__(self, workdir: str, just_logging: bool):
    self._path = None if just_logging else os.path.join(workdir, "metrics.jsonl")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items()))
    if self._path:
      with open(self._path, "a") as f:
        f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")

  def flush(self) -> None:
    pass


class _RateAndEta:
  """clu's ReportProgress line (steps/s between two reports, ETA) without clu."""

  def __init__(self, num_train_steps: int, writer=None, every_secs: float = 30.0):
    self._total, self._writer, self._every_secs = num_train_steps, writer, every_secs
    self._last = None  # (step, time) of the last report

  def __call__(self, step: int) -> None:
    now = time.monotonic()
    if self._last is None:
      self._last = (step, now)
      return
    last_step, last_time = self._last
    if now - last_time < self._every_secs or step == last_step:
      return
    rate = (step - last_step) / (now - last_time)
    logging.info("progress: %.1f steps/s, %.1f%% (%d/%d), ETA: %.1f min", rate,
                 100 * step / self._total, step, self._total, (self._total - step) / rate / 60)
    if self._writer is not None:
      self._writer.write_scalars(step, {"steps_per_sec": rate})
    self._last = (step, now)


def metric_writer(workdir: str, just_logging: bool = False):
  """clu's default writer (TensorBoard + log) or, without clu, the log + metrics.jsonl."""
  metric_writers = _clu("metric_writers")
  if metric_writers is None:
    return _LogAndJsonWriter(workdir, just_logging)
  return metric_writers.create_default_writer(workdir, just_logging=just_logging)


def report_progress(num_steps: int, writer=None, every_secs: float = 30.0) -> Callable[[int], None]:
  """report(step) after step finished: clu's ReportProgress, or _RateAndEta without clu."""
  periodic_actions = _clu("periodic_actions")
  if periodic_actions is None:
    return _RateAndEta(num_steps, writer, every_secs)
  return periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                         every_secs=every_secs)


def batches(what: str, total: int, every_secs: float = 10.0) -> Callable[..., None]:
  """report(done, outputs=None): blocks on outputs (a finished batch counts, a dispatched one
  does not), logs the rate / ETA line every every_secs seconds and `<what>: done/total` at the
  end."""
  reporter = report_progress(total, every_secs=every_secs)

  def report(done: int, outputs: Optional[object] = None) -> None:
    if outputs is not None:
      import jax  # pylint: disable=g-import-not-at-top
      jax.block_until_ready(outputs)
    reporter(done)
    if done == total:
      logging.info("%s: %d/%d done", what, done, total)
  return report


def within_batch(what: str, evaluations: int, every_secs: float = 10.0) -> Callable[[], None]:
  """tick() once per network evaluation of a sampling batch of `evaluations` evaluations (a host
  callback from inside the jitted sampler, jdiff.builders.make_sample_fn): logs
  `<what>: k/N network evaluations, rate, ETA of the batch` every every_secs seconds. After N
  ticks the count starts again (the next batch)."""
  state = {"done": 0, "start": 0.0, "last": 0.0}

  def tick() -> None:
    now = time.monotonic()
    if state["done"] == 0:
      state["start"] = state["last"] = now
    state["done"] += 1
    done = state["done"]
    if done == evaluations:
      state["done"] = 0
    elif now - state["last"] >= every_secs:  # tick k starts evaluation k: k - 1 are done
      rate = (done - 1) / max(now - state["start"], 1e-9)
      logging.info("%s: evaluation %d/%d (%.0f%%), %.2f/s, ETA of the batch: %.1f min",
                   what, done, evaluations, 100 * (done - 1) / evaluations, rate,
                   (evaluations - done + 1) / rate / 60)
      state["last"] = now
  return tick
