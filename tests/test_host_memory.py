"""jdiff/cpu/host_memory: glibc keeps the memory XLA:CPU frees, so a train step's buffers are not faulted
in afresh at every step."""

import os
import subprocess
import sys

import pytest

from jdiff import compute
from jdiff import config_lib
from jdiff import cpu
from jdiff.cpu import host_memory

# The quickstart config's train step (batch 64): the minor page faults of each of 8 steps after 3
# warm-ups, in a fresh process set up as jdiff.main sets it up (compute.start, before jax's
# backend starts).
_FAULTS_PER_STEP = """
import resource, sys
import jax, numpy as np
from jdiff import builders, compute, config_lib, parallel
from jdiff.drivers import train as train_lib
config = config_lib.load_config("configs/quickstart.py")
config.cpu.host_memory = sys.argv[1]
compute.start(config)
mesh = parallel.make_mesh()
_, state, train_step = train_lib.build_fresh_training(config, mesh)
images = parallel.global_batch_from_local(
    np.zeros((config.training.batch_size,) + builders.image_shape(config), np.uint8), mesh)
for _ in range(3):
  state, metrics = train_step(state, images)
  jax.block_until_ready(metrics)
faults = []
for _ in range(8):
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
  assert sorted(keep)[4] < 100, keep  # the median step


def test_start_keeps_host_memory_before_the_backend_and_gives_it_back_off_the_cpu(monkeypatch):
  calls = []
  monkeypatch.setattr(host_memory, "keep", lambda: calls.append("keep") or True)
  monkeypatch.setattr(host_memory, "release", lambda: calls.append("release") or True)
  config = config_lib.default_config()
  assert config.cpu.host_memory == "keep"
  order = lambda: calls.append("backend")
  assert isinstance(compute.start(config, order, backend="cpu"), cpu.CpuCompute)
  assert calls == ["keep", "backend"]  # kept before the backend starts, and kept
  calls.clear()
  assert type(compute.start(config, order, backend="gpu")) is compute.Compute  # pylint: disable=unidiomatic-typecheck
  assert calls == ["keep", "backend", "release"]  # GPU / TPU: glibc's defaults again
  calls.clear()
  config.cpu.host_memory = "release"
  compute.start(config, order, backend="cpu")
  assert calls == ["backend"]
  config.cpu.host_memory = "lots"
  with pytest.raises(config_lib.ConfigError, match="cpu.host_memory='lots'"):
    config_lib.validate(config)
