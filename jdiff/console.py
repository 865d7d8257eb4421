"""A quiet console for jdiff's programs (jdiff.main, the tools): call quiet_startup() before
TensorFlow (clu, TFDS) or jax is imported, and quiet_absl_handler() once absl's handler exists.

Hidden: TF's C++ INFO lines (the oneDNN notice, the CPU feature notice; TF_CPP_MIN_LOG_LEVEL=1
keeps its warnings and errors, and a user's own setting wins), jax's INFO line for each
platform it probes and does not find ("Unable to initialize backend 'tpu'"), and orbax's INFO
line per checkpoint step. Warnings of all of them still show.

TensorFlow >= 2.21 logs through absl's C++ logging, which prints its import-time notices before
it reads TF_CPP_MIN_LOG_LEVEL. For those, `import tensorflow` (whoever triggers it: clu, TFDS)
runs with file descriptor 2 captured, and every captured line but the known notices is written
back to stderr; TensorFlow is still imported only where it is used.
"""

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile

# Import-time INFO notices of TensorFlow's C++ side (its log format: "I0000 ... port.cc:153] ...").
TF_IMPORT_NOTICES = ("] oneDNN custom operations are on", "] This TensorFlow binary is optimized",
                     "To enable the following instructions:",
                     "All log messages before absl::InitializeLog() is called")


def _not_a_backend_probe(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or not record.getMessage().startswith(
      "Unable to initialize backend")


def _not_orbax_info(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


@contextlib.contextmanager
def _stderr_fd_without(notices):
  """Captures fd 2 (C++ writes included) and writes back the lines that are not `notices`."""
  sys.stderr.flush()
  saved_fd = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved_fd, 2)
      os.close(saved_fd)
      captured.seek(0)
      for line in captured.read().decode(errors="replace").splitlines(keepends=True):
        if not any(notice in line for notice in notices):
          sys.stderr.write(line)
      sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
  """The real loader of `tensorflow`, run with its import-time notices filtered out."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    sys.meta_path[:] = [finder for finder in sys.meta_path
                        if not isinstance(finder, _QuietTensorflowFinder)]
    with _stderr_fd_without(TF_IMPORT_NOTICES):
      self._loader.exec_module(module)


class _QuietTensorflowFinder(importlib.abc.MetaPathFinder):
  """Finds `tensorflow` with the other finders and wraps its loader in _QuietLoader.

  It stays on sys.meta_path until TensorFlow is imported: a lazy importer may only ask for the
  spec (importlib.util.find_spec) long before the import itself.
  """

  def find_spec(self, fullname, path, target=None):
    if fullname != "tensorflow":
      return None
    for finder in sys.meta_path:
      if finder is self or not hasattr(finder, "find_spec"):
        continue
      spec = finder.find_spec(fullname, path, target)
      if spec is not None:
        if spec.loader is not None and not isinstance(spec.loader, _QuietLoader):
          spec.loader = _QuietLoader(spec.loader)
        return spec
    return None


def quiet_startup() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  logging.getLogger("jax._src.xla_bridge").addFilter(_not_a_backend_probe)
  if os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0" and "tensorflow" not in sys.modules and not any(
      isinstance(finder, _QuietTensorflowFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorflowFinder())


def quiet_absl_handler() -> None:
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.get_absl_handler().addFilter(_not_orbax_info)
