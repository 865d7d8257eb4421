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
# warm-ups, in a fresh process set up as jdiff.main sets it up: the backend is started (to choose
# the Compute), then prepare_host() runs, before the first program.
_FAULTS_PER_STEP = """
import resource, sys
import jax, numpy as np
from jdiff import builders, compute, config_lib, parallel
from jdiff.drivers import train as train_lib
config = config_lib.load_config("configs/quickstart.py")
config.cpu.host_memory = sys.argv[1]
compute.for_backend(config).prepare_host()
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
  # Set once the backend is known (as jdiff.main does), a step still faults a few hundred pages
  # now and then (measured 2026-12-08, 8 steps: medians 0-5, up to ~400): a tenth of release's.
  assert sorted(keep)[4] < 1000, keep  # the median step


def test_only_the_cpu_s_compute_with_keep_touches_the_allocator(monkeypatch):
  calls = []
  monkeypatch.setattr(host_memory, "keep", lambda: calls.append("keep") or True)
  cpu.CpuCompute(host_memory="keep").prepare_host()
  assert calls == ["keep"]
  cpu.CpuCompute(host_memory="release").prepare_host()
  compute.Compute().prepare_host()  # GPU / TPU: glibc's defaults
  assert calls == ["keep"]
  config = config_lib.default_config()
  assert config.cpu.host_memory == "keep"
  compute.for_backend(config, backend="gpu").prepare_host()
  assert calls == ["keep"]
  config.cpu.host_memory = "lots"
  with pytest.raises(config_lib.ConfigError, match="cpu.host_memory='lots'"):
    config_lib.validate(config)
