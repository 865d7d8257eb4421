"""Test helpers: tiny configs, the optional real data and weights, subprocess runs of the CLI.

Most tests make their own data. A few read real public data or the real FID Inception weights,
from two folders named by environment variables; unset (a fresh clone), those tests skip, and
the suite touches no network:

  JDIFF_TEST_DATA     folder with cifar10_exact_subset.npz, cifar10_jpeg.tar.gz,
                      fashion_mnist/*.gz, sc09/sc09_sample.tar.gz, ... (SHARED_DATA;
                      requires_shared_data(*parts) skips a test when DATA/parts is absent)
  JDIFF_TEST_WEIGHTS  folder with fid_inception_2015-12-05_pool3.pth, the FID Inception-v3
                      weights in pytorch-fid's format (SHARED_WEIGHTS)

.ci/run sets each, unless already set, to data/ or weights/ of a `shared` folder next to the
repository's own folder, where that exists, then runs `bash launch/local.sh test`.
"""

import hashlib
import os
import socket
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


def _folder_of(variable: str) -> str:
  """$variable as an absolute path; "" when unset, and every test that reads it skips (paths
  joined onto "" are never opened)."""
  value = os.environ.get(variable, "")
  return os.path.abspath(value) if value else ""


SHARED_DATA = _folder_of("JDIFF_TEST_DATA")
SHARED_WEIGHTS = _folder_of("JDIFF_TEST_WEIGHTS")


TINY = os.path.join(REPO, "configs", "quickstart.py") + ":tiny"

_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "", None)


class NetworkUsedInTest(OSError):
  """A test reached for an address off this machine: no test may need the network."""


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
  """Every test runs with connections and name lookups off this machine refused (loopback and
  Unix sockets stay: jax.distributed's coordinator and the notebook kernels use them)."""
  real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

  def is_local(host) -> bool:
    return host in _LOCAL_HOSTS or str(host).startswith("127.")

  def connect(self, address):
    if isinstance(address, tuple) and not is_local(address[0]):
      raise NetworkUsedInTest(f"a test tried to connect to {address[0]!r}: tests must not use the "
                              "network (make the data in the test, or skip without it)")
    return real_connect(self, address)

  def getaddrinfo(host, *args, **kwargs):
    if not is_local(host):
      raise NetworkUsedInTest(f"a test tried to look up {host!r}: tests must not use the network")
    return real_getaddrinfo(host, *args, **kwargs)
  monkeypatch.setattr(socket.socket, "connect", connect)
  monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


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


def snapshot(directory) -> dict:
  """{relative path: sha256} of every file under directory: what a user had, to compare."""
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return found


def error_lines(result):
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_one_error_line(result, code, *fragments):
  """A CLI run failed with exit `code` and exactly one `error:` line holding every fragment."""
  lines = error_lines(result)
  assert result.returncode == code, (result.returncode, result.stderr[-3000:])
  assert len(lines) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]


def on_four_devices(check: str, timeout: int = 600):
  """Runs tests/on_four_devices.py CHECK (4 fake CPU devices through chex) in a fresh process."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "on_four_devices.py"), check],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0 and f"PASSED {check}" in result.stdout, result.stderr[-3000:]


def _requires(variable, folder, parts):
  if not folder:
    return pytest.mark.skipif(True, reason=f"{variable} not set (see tests/conftest.py)")
  path = os.path.join(folder, *parts)
  return pytest.mark.skipif(not os.path.exists(path), reason=f"{path} absent ({variable}={folder})")


def requires_shared_data(*parts):
  """Skips the test unless $JDIFF_TEST_DATA/parts exists."""
  return _requires("JDIFF_TEST_DATA", SHARED_DATA, parts)


def requires_shared_weights(*parts):
  """Skips the test unless $JDIFF_TEST_WEIGHTS/parts exists."""
  return _requires("JDIFF_TEST_WEIGHTS", SHARED_WEIGHTS, parts)
