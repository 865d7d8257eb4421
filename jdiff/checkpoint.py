"""Checkpoints: named orbax items, restore of the latest good one, and never losing a run.

Layout of <workdir>/checkpoints/<step>/ (orbax Composite items):
  state       what training resumes from, less the EMA params (a TrainState with ema_params=None;
              an SNGAN's whole GANState)
  ema_params  the EMA params: all that sampling and evaluation restore (no optimizer state)
  config      the config that wrote it (JSON), so a run with another model is refused
Checkpoints written before the items were named (<step>/default/, one whole TrainState) still
load, through `Legacy`.

What keeps a run safe:
- A step folder that never finished (no orbax commit record, e.g. an empty folder) or that
  fails to restore is damaged: training moves it to checkpoints/damaged-<step>/ (one warning
  line) and falls back to the previous step; sampling falls back with a warning, moving nothing.
- A checkpoint that does not fit the config is a mismatch, never damage:
  CheckpointMismatchError names the fields (or, for an old checkpoint without a config item, the
  arrays) that differ. Nothing is moved.
- A workdir that holds checkpoints (good or damaged) is never restarted from step 0 unless the
  caller asks (`set_aside_all`, the --from_scratch flag), which moves them aside and says where.
- `WorkdirLock`: one trainer per workdir.
"""

import dataclasses
import datetime
import fcntl
import json
import logging as std_logging
import os
import signal
import socket
import sys
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jdiff.errors import (EXIT_INTERRUPTED, CheckpointDamagedError, CheckpointMismatchError,
                          WorkdirBusyError, WorkdirError)

STATE, EMA_PARAMS, CONFIG = "state", "ema_params", "config"
LEGACY_ITEM = "default"       # the single item of checkpoints from before named items
DAMAGED_MARKER_SUFFIX = ".damaged.json"  # object stores: <step>.damaged.json beside <step>/
DAMAGED_PREFIX = "damaged-"   # checkpoints/damaged-<step>/: orbax does not list it as a step
REPLACED_PREFIX = "replaced-"  # a step an earlier run left where this run saves
MAX_NAMED_DIFFERENCES = 4


def _short(error: BaseException) -> str:
  """The first line of an exception, capped: orbax/tensorstore messages run to kilobytes."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  return f"{type(error).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _quiet_failed_restore_aftermath() -> None:
  """A failed restore of a damaged checkpoint leaves tensorstore reads running: each completion
  reports `RuntimeError: Event loop is closed` (orbax's event loop is gone) as an unraisable
  exception, ~100 tracebacks per checkpoint, and asyncio logs the failed reads as "Task exception
  was never retrieved" with kilobyte-long tensorstore specs. They say nothing that the one damage
  warning does not: drop exactly those reports, keep every other one."""
  previous = sys.unraisablehook
  if getattr(previous, "jdiff_quiet", False):
    return

  def hook(unraisable):
    if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
      return
    previous(unraisable)
  hook.jdiff_quiet = True
  sys.unraisablehook = hook

  def keep(record: std_logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not ("exception was never retrieved" in str(record.msg)
                and error is not None and "tensorstore" in str(error))
  std_logging.getLogger("asyncio").addFilter(keep)


# Errors that say nothing about a checkpoint's own files: never a reason to call a step damaged.
NOT_DAMAGE_MARKERS = ("PERMISSION_DENIED", "Permission denied", "RESOURCE_EXHAUSTED",
                      "Out of memory", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAUTHENTICATED")


def is_damage(error: BaseException) -> bool:
  """Whether a failed restore means the step's files are unreadable (damage), rather than that
  this process could not read them now (permission, memory, network): those fail the run."""
  if isinstance(error, (PermissionError, MemoryError, ConnectionError, TimeoutError)):
    return False
  text = str(error)[:4000]
  return not any(marker in text for marker in NOT_DAMAGE_MARKERS)


def _why_unreadable(error: BaseException) -> str:
  """A short reason for a failed read that is not damage."""
  text = str(error)
  if isinstance(error, PermissionError) or "Permission denied" in text or "PERMISSION_DENIED" in text:
    filename = getattr(error, "filename", None)
    return "permission denied" + (f": {filename}" if filename else "")
  if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "Out of memory" in text:
    return "out of memory"
  return _short(error)


def _is_remote(path: str) -> bool:
  return "://" in path


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _leaf_shapes(tree) -> Dict[str, Tuple[Tuple[int, ...], str]]:
  """{"params/conv_in/kernel": (shape, dtype)} of a pytree of arrays or of orbax metadata."""
  def name(path):
    parts = []
    for key in path:
      for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
          parts.append(str(getattr(key, attribute)))
          break
    return "/".join(parts)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {name(path): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in leaves}


def tree_differences(stored, expected) -> List[str]:
  """What differs between a checkpoint item's metadata and the abstract tree it should fill."""
  stored, expected = _leaf_shapes(stored), _leaf_shapes(expected)
  differences = [f"{key} is {stored[key][0]} there, {expected[key][0]} here"
                 for key in sorted(set(stored) & set(expected))
                 if stored[key][0] != expected[key][0]]
  differences += [f"{key} only there" for key in sorted(set(stored) - set(expected))]
  differences += [f"{key} only here" for key in sorted(set(expected) - set(stored))]
  return differences


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
  """Fields of `current` whose stored value differs, as 'field=<stored> there, <current> here'.

  A field that the stored record lacks (written by an older jdiff) is not compared.
  """
  def canonical(value):
    return json.loads(json.dumps(value))  # tuples and lists compare equal, as stored
  return [f"{field}={stored[field]!r} there, {current[field]!r} here" for field in sorted(current)
          if field in stored and canonical(stored[field]) != canonical(current[field])]


def _summarise(differences: Sequence[str]) -> str:
  shown = "; ".join(differences[:MAX_NAMED_DIFFERENCES])
  more = len(differences) - MAX_NAMED_DIFFERENCES
  return shown + (f"; and {more} more" if more > 0 else "")


@dataclasses.dataclass
class Legacy:
  """How to read a checkpoint from before named items: the abstract whole TrainState it holds,
  and a function that splits the restored whole into the named items wanted."""
  abstract: Any
  split: Callable[[Any], Dict[str, Any]]


def _handlers():
  return {STATE: ocp.StandardCheckpointHandler(), EMA_PARAMS: ocp.StandardCheckpointHandler(),
          CONFIG: ocp.JsonCheckpointHandler()}


class Checkpointer:
  """Saves and restores named items under <workdir>/checkpoints.

  read_only (sampling, evaluation): creates no folder, moves nothing; damaged steps are skipped
  with a warning.
  """

  def __init__(self, workdir: str, keep: Optional[int] = None, *, read_only: bool = False):
    # Cloud paths (gs://bucket/run, for TPU pods) go to orbax as they are; abspath mangles them.
    base = workdir if _is_remote(workdir) else os.path.abspath(workdir)
    self.directory = os.path.join(base, "checkpoints")
    self.read_only = read_only
    self._keep = keep
    self._saved_here = set()
    self.manager = None
    if read_only and not epath.Path(self.directory).exists():
      return  # nothing to read; and no empty folder for a mistyped workdir
    if not read_only:
      self._set_aside_unfinished_steps()
    self.manager = ocp.CheckpointManager(
        self.directory, item_handlers=_handlers(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only))
    # Reads go through a manager of this process alone: orbax's restore ends in a barrier of
    # all processes, which a process that failed before it would never reach (the others would
    # then pair that barrier with the next collective). Each process reads alone, and the
    # processes agree on the outcome afterwards (restore_latest).
    this_process = jax.process_index()
    self._reader = ocp.CheckpointManager(
        self.directory, item_handlers=_handlers(),
        options=ocp.CheckpointManagerOptions(
            create=False, read_only=True,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=this_process, active_processes={this_process})))

  # -- listing -----------------------------------------------------------------------------------

  def _step_dir(self, step: int) -> epath.Path:
    return epath.Path(self.directory) / str(step)

  def _listed_step_dirs(self) -> List[Tuple[int, epath.Path]]:
    root = epath.Path(self.directory)
    if not root.exists():
      return []
    return sorted((int(path.name), path) for path in root.iterdir()
                  if path.name.isdigit() and path.is_dir())

  def _is_finished(self, step_dir: epath.Path) -> bool:
    """orbax's own (public) finalization test, and at least one item written: an empty folder
    or one orbax never finalized is not a checkpoint."""
    return (ocp.path.step.is_path_finalized(step_dir)
            and any((step_dir / item).exists() for item in (STATE, EMA_PARAMS, CONFIG, LEGACY_ITEM)))

  def _marked_damaged(self, step: int) -> bool:
    return (epath.Path(self.directory) / f"{step}{DAMAGED_MARKER_SUFFIX}").exists()

  def all_steps(self) -> List[int]:
    """Finished checkpoint steps not set aside as damaged, oldest first."""
    return [step for step, path in self._listed_step_dirs()
            if self._is_finished(path) and not self._marked_damaged(step)]

  def damaged_steps(self) -> List[str]:
    root = epath.Path(self.directory)
    if not root.exists():
      return []
    moved = [path.name for path in root.iterdir() if path.name.startswith(DAMAGED_PREFIX)]
    marked = [f"{DAMAGED_PREFIX}{path.name[:-len(DAMAGED_MARKER_SUFFIX)]}" for path in root.iterdir()
              if path.name.endswith(DAMAGED_MARKER_SUFFIX)]
    return sorted(moved + marked)

  # -- moving aside ------------------------------------------------------------------------------

  def _set_aside(self, step: int, why: str, prefix: str = DAMAGED_PREFIX) -> None:
    """Moves checkpoints/<step> to checkpoints/<prefix><step>[-n]/ (process 0), with one warning.

    On an object store (gs://...) a rename is a copy and a delete, neither atomic nor cheap: a
    damaged step is marked instead (<step>.damaged.json beside it, which all_steps honours) and
    stays where it is."""
    source = self._step_dir(step)
    if _is_remote(self.directory) and prefix == DAMAGED_PREFIX:
      marker = epath.Path(self.directory) / f"{step}{DAMAGED_MARKER_SUFFIX}"
      if jax.process_index() == 0:
        marker.write_text(json.dumps({"step": step, "why": why}))
      logging.warning("checkpoint step %d is damaged (%s); marked so by %s", step, why, marker)
      return
    target = epath.Path(self.directory) / f"{prefix}{step}"
    suffix = 1
    while target.exists():
      target = epath.Path(self.directory) / f"{prefix}{step}-{suffix}"
      suffix += 1
    if jax.process_index() == 0:
      source.rename(target)
    what = "is damaged" if prefix == DAMAGED_PREFIX else "is replaced"
    logging.warning("checkpoint step %d %s (%s); moved to %s", step, what, why, target)

  def _set_aside_unfinished_steps(self) -> None:
    unfinished = [step for step, path in self._listed_step_dirs() if not self._is_finished(path)]
    _barrier("jdiff checkpoints: listed")
    for step in unfinished:
      self._set_aside(step, "it never finished writing: orbax did not finalize it, or it holds "
                      "no item")
    _barrier("jdiff checkpoints: unfinished steps set aside")

  def set_aside_all(self) -> Optional[str]:
    """Moves the whole checkpoints folder to checkpoints.replaced-<UTC time>/; returns where
    (None when there was nothing)."""
    root = epath.Path(self.directory)
    if not root.exists() or not any(root.iterdir()):
      return None
    if self.manager is not None:
      self.manager.close()
      self._reader.close()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = epath.Path(f"{self.directory}.replaced-{stamp}")
    _barrier("jdiff checkpoints: before set aside all")
    if jax.process_index() == 0:
      root.rename(target)
    _barrier("jdiff checkpoints: set aside all")
    # A fresh manager on the (now empty) folder.
    self.__init__(os.path.dirname(self.directory), self._keep)  # pylint: disable=unnecessary-dunder-call
    return str(target)

  # -- saving ------------------------------------------------------------------------------------

  def save(self, step: int, items: Dict[str, Any], config_record: Mapping[str, Any]) -> None:
    """Saves the items and the config record (identity_record) at `step`, asynchronously
    (`wait` or `close` to finish).

    A step that this run already saved is skipped (e.g. SIGTERM right after a periodic save); one
    left by an earlier run is never silently kept in place of this run's state: it is moved
    aside first.
    """
    assert not self.read_only
    if step in self._saved_here:
      return
    # A finished step folder that this run did not write is an earlier run's. (No reload of the
    # manager on every save: that re-lists steps under an asynchronous save and makes orbax
    # delete, or fail to find, the wrong ones.)
    if self._step_dir(step).exists():
      self.manager.wait_until_finished()
      self._set_aside(step, "an earlier run's; this run saves its own", REPLACED_PREFIX)
      marker = epath.Path(self.directory) / f"{step}{DAMAGED_MARKER_SUFFIX}"
      if jax.process_index() == 0 and marker.exists():
        marker.rename(epath.Path(self.directory) / f"{REPLACED_PREFIX}{step}{DAMAGED_MARKER_SUFFIX}")
      _barrier("jdiff checkpoints: replaced step set aside")
      self.manager.reload()
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    args[CONFIG] = ocp.args.JsonSave(dict(config_record))
    self.manager.save(step, args=ocp.args.Composite(**args), force=True)
    self._saved_here.add(step)

  def mark_saved(self, step: int) -> None:
    """The state in hand is checkpoint `step`'s (just restored): saving it again is a no-op."""
    self._saved_here.add(step)

  def wait(self) -> None:
    if self.manager is not None:
      self.manager.wait_until_finished()

  def close(self) -> None:
    if self.manager is not None:
      self.manager.wait_until_finished()
      self.manager.close()
      self._reader.close()

  # -- restoring ---------------------------------------------------------------------------------

  def _stored_config(self, step: int) -> Optional[dict]:
    if not (self._step_dir(step) / CONFIG).exists():
      return None
    return dict(self._reader.restore(step, args=ocp.args.Composite(
        **{CONFIG: ocp.args.JsonRestore()}))[CONFIG])

  def _check_fits(self, step: int, abstract_items: Dict[str, Any], identity: Mapping[str, Any],
                  stored_identity: Optional[Mapping[str, Any]], legacy: Optional[Legacy]) -> None:
    where = f"{self.directory} (step {step})"
    what_to_do = ("Sample with the config that trained them (its copy: the workdir's config.json)"
                  if self.read_only else "Use another --workdir, set these fields back, or train "
                  "again with --from_scratch (moves the old checkpoints aside)")
    if stored_identity is not None:
      differences = config_differences(stored_identity, identity)
      if differences:
        raise CheckpointMismatchError(
            f"the checkpoints in {where} were trained with another config: "
            f"{_summarise(differences)}. {what_to_do}")
    if (self._step_dir(step) / LEGACY_ITEM).exists():
      if legacy is None:
        raise CheckpointMismatchError(f"{where}: an old single-item checkpoint; this mode cannot "
                                      "read it")
      metadata = {LEGACY_ITEM: ocp.StandardCheckpointer().metadata(
          self._step_dir(step) / LEGACY_ITEM).item_metadata}
      abstract_items = {LEGACY_ITEM: legacy.abstract}
    else:
      metadata = self._reader.item_metadata(step)
    differences = []
    for name, abstract in abstract_items.items():
      stored = metadata[name] if name in metadata.keys() else None
      if stored is None:
        differences.append(f"item {name!r} missing")
        continue
      differences += tree_differences(getattr(stored, "tree", stored), abstract)
    if differences:
      raise CheckpointMismatchError(
          f"the checkpoints in {where} hold another model: {_summarise(differences)}. {what_to_do}")

  def restore(self, step: int, abstract_items: Dict[str, Any], legacy: Optional[Legacy] = None):
    """{item: restored tree} of one step (no checks; restore_latest is what runs use)."""
    if (self._step_dir(step) / LEGACY_ITEM).exists():
      whole = ocp.StandardCheckpointer().restore(self._step_dir(step) / LEGACY_ITEM,
                                                 legacy.abstract)
      return legacy.split(whole)
    restored = self._reader.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}))
    return {name: restored[name] for name in abstract_items}

  def _try_restore(self, step, abstract_items, identity, legacy):
    """This process's attempt at one step: (outcome, restored items or None, the error)."""
    try:
      record = self._stored_config(step)
      self._check_fits(step, abstract_items, identity,
                       None if record is None else record.get("identity"), legacy)
      return RESTORED, self.restore(step, abstract_items, legacy), None
    except (CheckpointMismatchError, AttributeError, NameError, AssertionError, ImportError) as e:
      return REFUSED, None, e  # another model, or a bug here: never a reason to move a step aside
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
      if not self._step_dir(step).exists():
        return VANISHED, None, e
      return (DAMAGED if is_damage(e) else UNREADABLE_NOW), None, e

  def restore_latest(self, abstract_items: Dict[str, Any], identity: Mapping[str, Any],
                     legacy: Optional[Legacy] = None) -> Optional[Tuple[int, Dict[str, Any]]]:
    """(step, {item: restored tree}) of the newest good checkpoint, or None when there is none.

    `identity` holds the config fields a checkpoint must match (config_lib.checkpoint_identity).
    Raises CheckpointMismatchError when the newest finished checkpoint holds another model,
    CheckpointDamagedError when checkpoints exist but none restores, and WorkdirError when a
    step cannot be read for a reason that is not damage (permission, memory, network): nothing
    is moved then.

    In a multi-process run the decision is one for all: process 0's list of steps is every
    process's, each process tries the step, and the outcomes are shared, so all restore the
    same step, all set the same steps aside, or all fail.
    """
    if self.manager is None:
      return None
    _quiet_failed_restore_aftermath()
    self.manager.reload()
    self._reader.reload()
    damaged = []
    for step in reversed(_agreed_steps(self.all_steps())):
      outcome, items, error = self._try_restore(step, abstract_items, identity, legacy)
      worst, where = _agreed_outcome(outcome)
      if worst == RESTORED:
        return step, items
      if worst == REFUSED:
        if error is not None and outcome == REFUSED:
          raise error
        raise CheckpointMismatchError(f"process {where} refused checkpoint step {step} in "
                                      f"{self.directory} (another model); see its error")
      if worst == UNREADABLE_NOW:
        reason = _why_unreadable(error) if outcome == UNREADABLE_NOW else f"on process {where}"
        raise WorkdirError(f"cannot read checkpoint step {step} in {self.directory} ({reason}); "
                           "nothing was moved: fix the cause and run again")
      if worst == VANISHED:
        # A trainer's rotation deleted it while we read it: the next newest is as good.
        logging.warning("checkpoint step %d in %s was deleted while being read (a trainer "
                        "rotates checkpoints there); trying the previous one", step, self.directory)
        continue
      damaged.append(step)
      why = _short(error) if error is not None else f"unreadable on process {where}"
      if self.read_only:
        logging.warning("checkpoint step %d in %s is unreadable (%s); trying the previous one",
                        step, self.directory, why)
      else:
        self._set_aside(step, why)
        _barrier("jdiff checkpoints: damaged step set aside")
        self.manager.reload()  # it must not think the moved step exists when this run saves it
    if damaged and not self.read_only:
      self.manager.reload()
    unreadable_now = {str(step) for step in damaged} if self.read_only else set()
    names = sorted(set(self.damaged_steps()) | unreadable_now)
    if names:
      what_to_do = ("train first (--mode=train with this --workdir)" if self.read_only else
                    "train again with --from_scratch to start a new run beside them")
      raise CheckpointDamagedError(f"no restorable checkpoint in {self.directory}, only damaged "
                                   f"ones ({', '.join(names)}): {what_to_do}")
    return None


# Outcomes of one process's attempt at a step, in the order in which one process's outcome
# decides for all: any refusal (another model) refuses, any error that is not damage fails the
# run, a step gone anywhere is skipped, damage anywhere sets it aside, else all restored it.
RESTORED, DAMAGED, VANISHED, UNREADABLE_NOW, REFUSED = 0, 1, 2, 3, 4


def _agreed_steps(steps: List[int]) -> List[int]:
  """Process 0's list of steps, on every process (a step may finish between two listings)."""
  if jax.process_count() == 1:
    return steps
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  count = int(multihost_utils.broadcast_one_to_all(np.int64(len(steps))))
  padded = np.full((max(count, 1),), -1, np.int64)
  padded[:min(count, len(steps))] = steps[:count]
  return [int(step) for step in multihost_utils.broadcast_one_to_all(padded)[:count]]


def _agreed_outcome(outcome: int) -> Tuple[int, int]:
  """(the deciding outcome over all processes, the first process that had it)."""
  if jax.process_count() == 1:
    return outcome, 0
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  outcomes = np.asarray(multihost_utils.process_allgather(np.int32(outcome))).reshape(-1)
  worst = int(outcomes.max())
  return worst, int(np.argmax(outcomes == worst))


def identity_record(config_dict: Mapping[str, Any], identity: Mapping[str, Any]) -> dict:
  """The config item: the whole config, and the fields a resuming run must match."""
  return {"config": dict(config_dict), "identity": dict(identity)}


class WorkdirLock:
  """An exclusive lock on <workdir>/train.lock holding the trainer's pid, host and start time.

  flock is released by the kernel when the process dies (kill -9 included), so a stale lock
  never blocks. Remote workdirs (gs://) cannot be flock'ed: there the lock is skipped, with a
  warning. In a multi-process run only process 0 takes it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "train.lock")
    self._fd = None
    self._workdir = workdir

  def __enter__(self):
    if _is_remote(self._workdir):
      logging.warning("%s: remote workdir, no lock against a second trainer", self._workdir)
      return self
    if jax.process_index() != 0:
      return self
    try:
      os.makedirs(self._workdir, exist_ok=True)
      self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"cannot write to --workdir={self._workdir} ({e.strerror})") from None
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(self.path) as f:
        holder = f.read().strip() or "unknown"
      os.close(self._fd)
      self._fd = None
      raise WorkdirBusyError(f"--workdir={self._workdir} is in use by another trainer ({holder}); "
                             "wait for it, stop it, or use another --workdir") from None
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
      os.ftruncate(self._fd, 0)
      os.write(self._fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
    except OSError as e:
      self.__exit__()
      raise WorkdirError(f"cannot write to --workdir={self._workdir} ({e.strerror})") from None
    return self

  def __exit__(self, *exc_info):
    if self._fd is not None:
      try:
        os.ftruncate(self._fd, 0)
      except OSError:
        pass  # a full or read-only disk: the lock still goes with the descriptor
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


# -- training's side: resume, save, interruption -------------------------------------------------


def resume(checkpointer: Checkpointer, abstract_items: Dict[str, Any], identity: Mapping[str, Any],
           legacy: Optional[Legacy], from_scratch: bool) -> Optional[Tuple[int, Dict[str, Any]]]:
  """The checkpoint a train run continues from, or None to start at step 0.

  from_scratch moves every existing checkpoint aside first (and says where); without it, a
  workdir whose checkpoints do not fit or do not restore raises instead of starting over.
  """
  if from_scratch:
    moved_to = checkpointer.set_aside_all()
    if moved_to:
      logging.warning("--from_scratch: moved the existing checkpoints to %s; starting at step 0",
                      moved_to)
    return None
  restored = checkpointer.restore_latest(abstract_items, identity, legacy)
  if restored is not None:
    # The state is that checkpoint's: a save at the same step (a signal right away) is a no-op.
    checkpointer.mark_saved(restored[0])
  return restored


def save_or_fail(checkpointer: Checkpointer, step: int, items: Dict[str, Any],
                 config_record: Mapping[str, Any], wait: bool = False) -> None:
  """Saves, turning a failed write (disk full, read-only, gone) into one WorkdirError line."""
  try:
    checkpointer.save(step, items, config_record)
    if wait:
      checkpointer.wait()
  except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
    raise WorkdirError(f"could not write checkpoint step {step} to {checkpointer.directory} "
                       f"({_short(e)}); the earlier checkpoints are intact") from None


def close_or_fail(checkpointer: Checkpointer) -> None:
  """Finishes pending asynchronous saves; a failure is one WorkdirError line."""
  try:
    checkpointer.close()
  except Exception as e:  # pylint: disable=broad-except
    raise WorkdirError(f"could not finish writing checkpoints to {checkpointer.directory} "
                       f"({_short(e)}); the earlier checkpoints are intact") from None


class Interruption:
  """SIGTERM (preemption) and SIGINT (Ctrl-C) ask the train loop to save and stop.

  The loop asks `requested(at_boundary)` once a step, saves a checkpoint and returns; the command
  line then exits with 143 (SIGTERM) or 130 (SIGINT). A second Ctrl-C stops at once
  (KeyboardInterrupt) without saving.

  With one process the answer is the local flag, every step. With several, the processes must
  agree on the step they stop at, which takes a collective: it is made only at boundaries (the
  loop's log and checkpoint steps, where the host waits for the device anyway), so between them
  the host dispatches steps without waiting. A signal is acted on at the next boundary
  (training.log_every steps at most).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: Optional[str] = None
    # Python lets only the main thread set handlers; elsewhere (a training thread in a notebook)
    # signals keep their defaults.
    main_thread = threading.current_thread() is threading.main_thread()
    self._previous = ({signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
                      if main_thread else {})

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning("%s received: saving a checkpoint and stopping (Ctrl-C again to stop at once, "
                    "without saving)", name)
    self.signal_name = name

  def restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def requested(self, at_boundary: bool = True) -> bool:
    """Whether to save and stop now: with one process as soon as a signal came; with several,
    True on every process at the first boundary after any process was signalled."""
    if jax.process_count() == 1:
      return self.signal_name is not None
    if not at_boundary:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    asked = multihost_utils.process_allgather(np.array(self.signal_name is not None))
    if np.any(asked) and self.signal_name is None:
      self.signal_name = "SIGTERM"  # another process was preempted
    return bool(np.any(asked))

  @property
  def exit_code(self) -> int:
    return EXIT_INTERRUPTED[self.signal_name] if self.signal_name else 0
