"""The errors a user sees, and the exit code of each.

Every user-facing failure is a JdiffError whose message is one line: what is wrong (naming the
field, file or value) and what to do. `jdiff.main` prints `error: <message>` and exits with the
error's exit_code; nothing else of the failure is printed.

Exit codes (also in the README):
  0    done
  1    the run failed (no checkpoint to sample from, damaged checkpoints, evaluation inputs,
       an unwritable or full disk)
  2    bad input: a config value, a data file, a workdir that holds another model, a workdir
       that another trainer holds
  3    training stopped on a non-finite loss (the last checkpoint is good)
  130  stopped by SIGINT (Ctrl-C) after saving a checkpoint
  143  stopped by SIGTERM (preemption) after saving a checkpoint
"""

EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as shells report it


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
