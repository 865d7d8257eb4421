"""python launch/without_tensorflow.py ARGS: `python -m jdiff.main ARGS` with TensorFlow,
tensorflow_datasets and clu hidden, as on the lent GPU machines (which have none of them). What
fails here fails there; tests/test_without_tensorflow.py runs bench and train through it."""

import runpy
import sys

HIDDEN = ("tensorflow", "tensorflow_datasets", "clu")


class _Hiding:
  """A meta-path finder that finds nothing of HIDDEN (so importlib.util.find_spec says None, as
  when the package is not installed) and delegates the rest to the finder it wraps."""

  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in HIDDEN:
      return None
    return self._finder.find_spec(name, path, target)

  def __getattr__(self, attribute):
    return getattr(self._finder, attribute)


def hide() -> None:
  """Makes HIDDEN unimportable in this process from now on (those already imported stay)."""
  sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]


if __name__ == "__main__":
  hide()
  sys.argv = ["jdiff.main"] + sys.argv[1:]
  runpy.run_module("jdiff.main", run_name="__main__", alter_sys=True)
