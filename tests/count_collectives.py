"""Runs `python -m jdiff.main ARGS` with every cross-process collective of
jax.experimental.multihost_utils recorded: which function, and the train loop's step when it was
called from inside the loop. Written as JSON to $JDIFF_COLLECTIVES_LOG.<process index> at exit.

  python tests/count_collectives.py --config=... --mode=train ...
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
  import jax  # pylint: disable=g-import-not-at-top
  with open(f"{os.environ['JDIFF_COLLECTIVES_LOG']}.{jax.process_index()}", "w") as f:
    json.dump(CALLS, f)


sys.argv = ["jdiff.main"] + sys.argv[1:]
runpy.run_module("jdiff.main", run_name="__main__", alter_sys=True)
