"""host_memory: glibc keeps the memory XLA:CPU frees, so a train step's buffers are not faulted
in afresh at every step."""

import os
import subprocess
import sys

import pytest

from jdiff import config_lib
from jdiff import host_memory

# The quickstart config's train step (batch 64): the minor page faults of each of 5 steps after 3
# warm-ups, in a fresh process (the setting must precede jax's backend).
_FAULTS_PER_STEP = """
import resource, sys
from jdiff import host_memory
host_memory.apply(sys.argv[1])
import jax, numpy as np
from jdiff import builders, config_lib, parallel
from jdiff.drivers import train as train_lib
config = config_lib.load_config("configs/quickstart.py")
mesh = parallel.make_mesh()
_, state, train_step = train_lib.build_fresh_training(config, mesh)
images = parallel.global_batch_from_local(
    np.zeros((config.training.batch_size,) + builders.image_shape(config), np.uint8), mesh)
for _ in range(3):
  state, metrics = train_step(state, images)
  jax.block_until_ready(metrics)
faults = []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  state, metrics = train_step(state, images)
  jax.block_until_ready(metrics)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def _faults_per_step(setting: str):
  out = subprocess.run([sys.executable, "-c", _FAULTS_PER_STEP, setting], check=True,
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return [int(faults) for faults in out.stdout.strip().splitlines()[-1].split()]


@pytest.mark.skipif(host_memory._glibc() is None,  # pylint: disable=protected-access
                    reason="mallopt is glibc's")
def test_keep_stops_the_page_faults_of_every_train_step():
  release, keep = _faults_per_step("release"), _faults_per_step("keep")
  # glibc's defaults: ~11k pages (44 MiB) faulted in again at every step. Kept: none once the heap
  # has settled (now and then a step still grows it by a few MB, so not every step is at 0).
  assert min(release) > 4000, release
  assert sorted(keep)[2] < 100, keep  # the median step


def test_auto_keeps_unless_an_accelerator_plugin_is_installed(monkeypatch):
  calls = []
  monkeypatch.setattr(host_memory, "keep", lambda: calls.append("keep") or True)
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(host_memory, "accelerator_plugin", lambda: None)
  assert host_memory.apply("auto") and calls == ["keep"]
  monkeypatch.setattr(host_memory, "accelerator_plugin", lambda: "jax_cuda12_plugin")
  assert not host_memory.apply("auto") and calls == ["keep"]
  assert host_memory.apply("keep") and calls == ["keep", "keep"]
  assert not host_memory.apply("release") and calls == ["keep", "keep"]
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the CPU first: kept, plugin or not
  assert host_memory.apply("auto") and calls == ["keep", "keep", "keep"]


def test_a_bad_setting_is_refused_in_one_line():
  with pytest.raises(ValueError, match=r"host_memory='lots': must be one of \('auto', 'keep', "
                     r"'release'\)"):
    host_memory.apply("lots")
  config = config_lib.default_config()
  assert config.host_memory == "auto"
  config.host_memory = "lots"
  with pytest.raises(config_lib.ConfigError, match="host_memory='lots'"):
    config_lib.validate(config)
