"""Checkpoints through orbax: save every N steps, keep the last N, restore the latest good one."""

import os
from typing import Any, Optional

import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Saves/restores a train-state pytree under <workdir>/checkpoints."""

  def __init__(self, workdir: str, keep: int):
    # Cloud paths (gs://bucket/run, for TPU pods) go to orbax as they are; abspath would mangle them.
    base = workdir if "://" in workdir else os.path.abspath(workdir)
    self.directory = os.path.join(base, "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def save(self, step: int, state: Any) -> None:
    if step in self.manager.all_steps():  # e.g. SIGTERM right after a periodic save
      return
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state: Any) -> Optional[Any]:
    """The newest checkpoint that restores; a corrupt or partial one falls back with a warning.

    Orbax writes into a temporary folder and renames it when complete, so an interrupted save
    is never listed; a damaged finished one fails to restore and the previous one is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # orbax/tensorstore raise many types for damaged files.
        logging.warning("checkpoint at step %d in %s is unreadable (%s: %s); falling back to the "
                        "previous one", step, self.directory, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
