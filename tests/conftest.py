"""Shared test helpers: tiny configs, the shared data folder, subprocess runs of the CLI."""

import os
import subprocess
import sys
import tempfile

import pytest

# Many tests (and the subprocesses and notebook kernels they start, which inherit these
# variables) compile the same tiny programs; XLA's persistent cache compiles each once per
# machine. Its key is the program, the jax version and the flags, so a hit is the same executable.
XLA_CACHE = os.path.join(tempfile.gettempdir(), f"jdiff-tests-xla-cache-{os.getuid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


TINY = os.path.join(REPO, "configs", "quickstart.py") + ":tiny"


def tiny_config():
  """configs/quickstart.py:tiny (a train step compiles and runs in seconds), loaded as the CLI does."""
  from jdiff import config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load_config(TINY)


def restore_train_state(config, workdir, step=None):
  """(step, TrainState) of the latest good checkpoint in workdir (or of `step`), read only."""
  from jdiff import builders, config_lib, parallel  # pylint: disable=g-import-not-at-top
  from jdiff import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  abstract = builders.abstract_state(config, builders.build_model(config),
                                     builders.build_optimizer(config.training),
                                     parallel.make_mesh())
  checkpointer = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
  try:
    if step is None:
      restored = checkpointer.restore_latest(builders.checkpoint_items(abstract),
                                             config_lib.checkpoint_identity(config, "train"))
      assert restored is not None, f"no checkpoint in {workdir}"
      step, items = restored
    else:
      items = checkpointer.restore(step, builders.checkpoint_items(abstract))
  finally:
    checkpointer.close()
  return step, builders.state_from_items(items)


def cli(args, env=None, **kwargs):
  """Runs `python -m jdiff.main ARGS` in a fresh process."""
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
  return subprocess.run([sys.executable, "-m", "jdiff.main", *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, **kwargs)


def on_four_devices(check: str, timeout: int = 600):
  """Runs tests/on_four_devices.py CHECK (4 fake CPU devices through chex) in a fresh process."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "on_four_devices.py"), check],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0 and f"PASSED {check}" in result.stdout, result.stderr[-3000:]


def requires_shared_data(*parts):
  path = os.path.join(SHARED_DATA, *parts)
  return pytest.mark.skipif(not os.path.exists(path), reason=f"{path} absent (no ../shared/data)")
