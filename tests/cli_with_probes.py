"""Runs `python -m jdiff.main ARGS` with probes for the multi-process tests:

  JDIFF_COLLECTIVES_LOG=<path>       every cross-process collective of
                                     jax.experimental.multihost_utils is recorded (which function,
                                     and the train loop's step when called inside the loop) and
                                     written as JSON to <path>.<process index> at exit
  JDIFF_FAIL_RESTORE_ON_PROCESS=<i>  process i's checkpoint restores raise PermissionError, as
                                     an unreadable file would on that host only

  python tests/cli_with_probes.py --config=... --mode=train ...
"""

import atexit
import json
import os
import runpy
import sys

from jax.experimental import multihost_utils

CALLS = []
COLLECTIVES = ("process_allgather", "sync_global_devices", "broadcast_one_to_all")


def _loop_step():
  """The `step` local of the train loop frame on the stack, or None outside the loop."""
  frame = sys._getframe(2)  # pylint: disable=protected-access
  while frame is not None:
    if frame.f_code.co_name == "_train_loop" and "step" in frame.f_locals:
      return int(frame.f_locals["step"])
    frame = frame.f_back
  return None


def _recorded(name, function):
  def wrapper(*args, **kwargs):
    CALLS.append({"function": name, "step": _loop_step()})
    return function(*args, **kwargs)
  return wrapper


for _name in COLLECTIVES:
  setattr(multihost_utils, _name, _recorded(_name, getattr(multihost_utils, _name)))


@atexit.register
def _write():
  if "JDIFF_COLLECTIVES_LOG" not in os.environ:
    return
  import jax  # pylint: disable=g-import-not-at-top
  with open(f"{os.environ['JDIFF_COLLECTIVES_LOG']}.{jax.process_index()}", "w") as f:
    json.dump(CALLS, f)


if "JDIFF_FAIL_RESTORE_ON_PROCESS" in os.environ:
  from jdiff import checkpoint  # pylint: disable=g-import-not-at-top
  _real_restore = checkpoint.Checkpointer.restore

  def _failing_restore(self, step, abstract_items, legacy=None):
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() == int(os.environ["JDIFF_FAIL_RESTORE_ON_PROCESS"]):
      raise PermissionError(13, "Permission denied", f"checkpoints/{step}/ema_params")
    return _real_restore(self, step, abstract_items, legacy)
  checkpoint.Checkpointer.restore = _failing_restore


sys.argv = ["jdiff.main"] + sys.argv[1:]
runpy.run_module("jdiff.main", run_name="__main__", alter_sys=True)
