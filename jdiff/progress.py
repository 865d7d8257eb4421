"""Progress with rate and ETA for long loops, through clu's ReportProgress (the train loop's too)."""

from typing import Callable

from absl import logging
from clu import periodic_actions


def batches(what: str, total: int, every_secs: float = 10.0) -> Callable[[int], None]:
  """report(done): logs `<what>: done/total` when it ends, and clu's rate / ETA line every
  every_secs seconds on the way."""
  reporter = periodic_actions.ReportProgress(num_train_steps=total, every_secs=every_secs)

  def report(done: int) -> None:
    reporter(done)
    if done == total:
      logging.info("%s: %d/%d done", what, done, total)
  return report
