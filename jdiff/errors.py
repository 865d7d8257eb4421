"""The errors a user sees, and the exit code of each.

Every user-facing failure is a JdiffError whose message is one line: what is wrong (naming the
field, file or value) and what to do. `jdiff.main` prints `error: <message>` and exits with the
error's exit_code; nothing else of the failure is printed.

Exit codes (also in docs/usage.md):
  0    done
  1    the run failed (no checkpoint to sample from, damaged checkpoints, evaluation inputs,
       an unwritable or full disk)
  2    bad input: a config value, a data file, a workdir that holds another model, a workdir
       that another trainer holds
  3    training stopped on a non-finite loss (the last checkpoint is good)
  130  stopped by SIGINT (Ctrl-C): training saved a checkpoint first; sample / evaluate /
       reference_stats say what they kept (finished evaluation batches; never a half file)
  143  stopped by SIGTERM (preemption): the same
"""

import signal as signal_lib
from typing import Optional

EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as shells report it


class StopRequested(BaseException):
  """Raised by request_stop, the SIGINT / SIGTERM handler of the modes that do not train:
  unwinds the run so that it can say what it kept."""

  def __init__(self, signal_name: str = "SIGTERM"):
    super().__init__(signal_name)
    self.signal_name = signal_name


def signal_name(stop: BaseException) -> str:
  """"SIGINT" for a KeyboardInterrupt, the signal of a StopRequested."""
  return getattr(stop, "signal_name", "SIGINT")


_requested_stop: Optional[str] = None  # the signal a non-training run was asked to stop by


def request_stop(signum, frame) -> None:
  """The SIGINT / SIGTERM handler of the modes that do not train: remembers the signal and
  raises StopRequested. Python may raise it inside code that swallows exceptions (a garbage
  collection callback of jaxlib's, for one), so the loops also call raise_if_stop_requested
  between batches: a signal is never lost."""
  del frame
  global _requested_stop
  _requested_stop = signal_lib.Signals(signum).name
  raise StopRequested(_requested_stop)


def raise_if_stop_requested() -> None:
  if _requested_stop is not None:
    raise StopRequested(_requested_stop)


class JdiffError(Exception):
  """Base class: main prints the message as one line and exits with exit_code."""
  exit_code = 1


class ConfigError(JdiffError, ValueError):
  """A config value, a config file or a command-line flag is invalid."""
  exit_code = 2


class DataError(JdiffError):
  """A data set that is missing, unreadable or of the wrong shape; the message says what to do."""
  exit_code = 2


class CheckpointMissingError(JdiffError):
  """Sampling or evaluation found no checkpoint in the workdir."""
  exit_code = 1


class CheckpointMismatchError(JdiffError):
  """The workdir's checkpoints hold another model (different model / diffusion / objective)."""
  exit_code = 2


class CheckpointDamagedError(JdiffError):
  """The workdir holds checkpoints, and none of them can be restored."""
  exit_code = 1


class WorkdirBusyError(JdiffError):
  """Another trainer holds the workdir's lock."""
  exit_code = 2


class WorkdirError(JdiffError):
  """The workdir cannot be read or written (missing, read-only, disk full)."""
  exit_code = 1


class NonFiniteLossError(JdiffError):
  """The loss or gradient became NaN/inf; the state kept the last finite parameters."""
  exit_code = 3


class EvaluationError(JdiffError):
  """An evaluation input (weights, reference statistics, stored samples) is unusable."""
  exit_code = 1


class OutOfMemoryError(JdiffError):
  """The device ran out of memory; the message names the batch size to lower."""
  exit_code = 1


def is_out_of_memory(error: BaseException) -> bool:
  """XLA's RESOURCE_EXHAUSTED (any backend) or the host's MemoryError."""
  return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)[:2000]


def out_of_memory(error: BaseException, config, mode: str) -> OutOfMemoryError:
  """One line naming the batch-size field of the mode, its value, and a smaller one to try."""
  field = {"train": "training.batch_size",
           "reference_stats": "evaluation.feature_batch_size"}.get(mode, "sampling.batch_size")
  section, name = field.split(".")
  value = config[section][name]
  first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
  return OutOfMemoryError(
      f"out of memory with --config.{field}={value} ({first[:160]}): lower it, e.g. "
      f"--config.{field}={max(1, int(value) // 4)}" +
      (", or set --config.model.remat=True" if mode == "train" else ""))


class Interrupted(JdiffError):
  """SIGINT or SIGTERM stopped a run that does not train; the message says what was kept."""

  def __init__(self, signal: str, message: str):
    super().__init__(message)
    self.exit_code = EXIT_INTERRUPTED[signal]
