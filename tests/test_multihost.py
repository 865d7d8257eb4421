"""Multi-host correctness on one machine.

Two processes on localhost, coordinated by jax.distributed (the JDIFF_* variables that
`--config.distributed=True` reads), each with 2 simulated CPU devices and its own rows of every
global batch, train the tiny quickstart through the CLI into one workdir. One process with 4
simulated devices and the same global batch trains the same config; the states must agree. The
checkpoint the 2 processes wrote must then restore, and resume, in a single process.
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from conftest import REPO, restore_train_state, tiny_config
from jdiff import checkpoint as checkpoint_lib

STEPS_2PROC = 4        # the 2-process run stops here (checkpoints at 2 and 4) ...
STEPS_TOTAL = 6        # ... the 1-process runs go on to here
CHECKPOINT_EVERY = 2
TIMEOUT_S = 300        # per subprocess: a hang (e.g. a peer that died) fails instead of blocking
# ||run_a - run_b|| / ||run_b(step) - run_b(step - CHECKPOINT_EVERY)||, per tree: how far apart the
# runs are, relative to how far the last steps moved the state. Seen: <= 5e-5 (rounding of the
# gradient all-reduce, see _assert_same_training).
RELATIVE_TOLERANCE = 1e-3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(num_devices, **extra):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
              TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.path.join(REPO, "tests"), **extra)


def _start_two_processes(workdir, num_steps, mode="train", extra_args=()):
  """`python -m jdiff.main --mode=MODE --config.distributed=True` in 2 processes x 2 devices."""
  port = _free_port()
  command = [sys.executable, "-m", "jdiff.main", "--config=configs/quickstart.py:tiny",
             f"--workdir={workdir}", f"--mode={mode}",
             f"--config.training.num_steps={num_steps}",
             f"--config.training.checkpoint_every={CHECKPOINT_EVERY}", "--config.distributed=True",
             *extra_args]
  return [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=_env(2, JDIFF_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                               JDIFF_NUM_PROCESSES="2",
                                               JDIFF_PROCESS_ID=str(process_id)))
          for process_id in range(2)]


# One process, 4 simulated devices (the mesh size and global batch of the 2 x 2 run) trains the
# same config to STEPS_TOTAL in the workdir it is given (fresh, or a copy of the 2-process run's).
_ONE_PROCESS_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    from absl import logging
    from conftest import tiny_config
    from jdiff import train
    assert jax.process_count() == 1 and jax.device_count() == 4, jax.devices()
    logging.set_verbosity(logging.INFO)  # the "resumed from ... at step N" line
    config = tiny_config()
    config.training.num_steps, config.training.checkpoint_every = {steps}, {every}
    train_lib.train(config, sys.argv[1])
""")


def _start_one_process(cache_dir, workdir):
  script = _ONE_PROCESS_SCRIPT.format(steps=STEPS_TOTAL, every=CHECKPOINT_EVERY)
  # The resumed run compiles the reference run's train step again: a hit in the persistent cache.
  return subprocess.Popen([sys.executable, "-c", script, str(workdir)], cwd=REPO,
                          env=_env(4, JAX_COMPILATION_CACHE_DIR=str(cache_dir)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(processes):
  """stderr of each process, which must all exit 0 within TIMEOUT_S."""
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=TIMEOUT_S))
  finally:
    for process in processes:  # one timed out or died: don't leave the others waiting on it
      if process.poll() is None:
        process.kill()
        process.communicate()
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, f"{process.args[:3]}...:\n{stderr[-3000:]}"
  return [stderr for _, stderr in outputs]


def _restore(workdir, step):
  """The train state saved at `step` in workdir, restored in this single process."""
  restored_step, state = restore_train_state(tiny_config(), workdir, step)
  assert restored_step == step
  return jax.device_get(state)


def _steps(workdir):
  checkpointer = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
  try:
    return checkpointer.all_steps()
  finally:
    checkpointer.close()


def _groups(state):
  """{name: [float leaves]}: params, ema_params and each optimizer statistic (mu, nu) apart,
  since their scales differ by orders of magnitude; integer leaves (step, Adam's count) too."""
  groups = {"params": jax.tree.leaves(state.params),
            "ema_params": jax.tree.leaves(state.ema_params), "integers": [state.step]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
    if not np.issubdtype(np.asarray(leaf).dtype, np.floating):
      groups["integers"].append(leaf)
      continue
    names = [k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)]
    groups.setdefault("opt_state." + (names[0] if names else "other"), []).append(leaf)
  return groups


def _norm(leaves):
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in leaves)))


def _assert_same_training(a, b, b_before):
  """a and b are the same training up to rounding (b_before: b's run a few steps earlier).

  Not bitwise: both runs execute the same 4-way SPMD program on the same global batch, but the
  gradient all-reduce sums the 4 devices' partial gradients in a different order across processes
  (gloo) than within one process, so gradients differ in the last bit and Adam carries that on.
  Elements with a zero true gradient (e.g. attention key biases) are pure rounding noise, so the
  comparison is per tree, relative to how far the last few steps of training moved it.
  """
  groups_a, groups_b, groups_before = _groups(a), _groups(b), _groups(b_before)
  assert set(groups_a) == set(groups_b) and len(groups_a) >= 5, sorted(groups_a)
  for x, y in zip(groups_a.pop("integers"), groups_b.pop("integers")):
    np.testing.assert_array_equal(x, y)
  for name in groups_a:
    difference = _norm([x.astype(np.float64) - y for x, y in zip(groups_a[name], groups_b[name])])
    moved = _norm([y.astype(np.float64) - z for y, z in zip(groups_b[name], groups_before[name])])
    assert moved > 0, name
    assert difference <= RELATIVE_TOLERANCE * moved, (name, difference, moved)
  # And element-wise, parameters agree to 1% of one learning-rate step.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-5), a.params, b.params)


# ~3 min on 2 shared CPU cores (about 170 s of CPU, most of it compiling init and the train step
# in 4 processes), over the default run's budget: `pytest -m slow tests/test_multihost.py`.
@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_resumes_in_one_process(tmp_path):
  # One test, not a module fixture shared by two: under pytest-xdist the two could land on
  # different workers and each pay for the runs.
  two, one, resumed = tmp_path / "two_processes", tmp_path / "one_process", tmp_path / "resumed"
  cache = tmp_path / "jax_cache"
  # 2 processes train to STEPS_2PROC while 1 process trains the reference run to STEPS_TOTAL.
  logs = _wait(_start_two_processes(two, STEPS_2PROC) + [_start_one_process(cache, one)])
  for process_id in range(2):
    assert f"process {process_id} of 2, 2 local / 4 global devices" in logs[process_id]
  # Only process 0 writes TensorBoard files; both processes wrote one checkpoint per save.
  assert len(glob.glob(str(two / "events.out.tfevents.*"))) == 1, os.listdir(two)
  assert _steps(two) == [2, 4]
  state = _restore(two, STEPS_2PROC)  # restores in this single process
  assert int(state.step) == STEPS_2PROC
  _assert_same_training(state, _restore(one, STEPS_2PROC),
                        _restore(one, STEPS_2PROC - CHECKPOINT_EVERY))

  # 1 process resumes (a copy of) the 2-process workdir to STEPS_TOTAL: same as the reference.
  shutil.copytree(two, resumed)
  [log] = _wait([_start_one_process(cache, resumed)])
  assert f"resumed from {resumed / 'checkpoints'} at step {STEPS_2PROC}" in log, log[-3000:]
  assert _steps(resumed) == [2, 4, 6]
  _assert_same_training(_restore(resumed, STEPS_TOTAL), _restore(one, STEPS_TOTAL),
                        _restore(one, STEPS_TOTAL - CHECKPOINT_EVERY))


# Two processes decoding the same TFDS split into one data_dir at once (the processes of a
# multi-host run sharing a home directory): tensorflow_datasets is faked, the race is real.
_EVALUATE_ARGS = ("--config.evaluation.num_samples=10", "--config.evaluation.bpd_examples=8")


@pytest.mark.slow
def test_two_processes_evaluate_like_one(tmp_path):
  """--mode=evaluate in 2 processes x 2 devices: the same samples, Digits FD and bits/dim as one
  process with 4 devices, each written once (by process 0)."""
  workdir = str(tmp_path / "run")
  one_process = [sys.executable, "-m", "jdiff.main", "--config=configs/quickstart.py:tiny",
                 f"--workdir={workdir}", f"--config.training.num_steps={CHECKPOINT_EVERY}",
                 f"--config.training.checkpoint_every={CHECKPOINT_EVERY}", *_EVALUATE_ARGS]
  for mode in ("train", "evaluate"):
    _wait([subprocess.Popen(one_process + [f"--mode={mode}", "--config.evaluation.name=one"],
                            cwd=REPO, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)])
  _wait(_start_two_processes(workdir, CHECKPOINT_EVERY, "evaluate",
                             (*_EVALUATE_ARGS, "--config.evaluation.name=two")))
  results = {}
  for name in ("one", "two"):
    out_dir = os.path.join(workdir, "eval", name, f"step_{CHECKPOINT_EVERY}")
    with open(os.path.join(out_dir, "metrics.json")) as f:
      results[name] = json.load(f)
    batches = sorted(glob.glob(os.path.join(out_dir, "samples", "batch_*.npz")))
    results[name]["samples"] = np.concatenate([np.load(path)["images"] for path in batches])
  np.testing.assert_array_equal(results["two"]["samples"], results["one"]["samples"])
  for key in ("digits_fd", "bits_per_dim"):
    assert results["two"][key] == pytest.approx(results["one"][key], rel=1e-5), key
  assert results["two"]["num_devices"] == 4


_DECODE_SCRIPT = textwrap.dedent("""
    import os, sys, time, types
    import numpy as np
    data_dir, process_id = sys.argv[1], sys.argv[2]
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)

    def as_numpy(dataset):
      for image in dataset:
        time.sleep(0.05)  # slow decoding, so that the two processes overlap
        yield {"image": image}

    class Builder:
      info = types.SimpleNamespace(splits={"train": types.SimpleNamespace(num_examples=len(images))})
      def download_and_prepare(self):
        pass
      def as_dataset(self, split, shuffle_files):
        return images

    sys.modules["tensorflow_datasets"] = types.SimpleNamespace(
        builder=lambda name, data_dir=None: Builder(), as_numpy=as_numpy)
    from jdiff import data
    open(os.path.join(data_dir, "ready" + process_id), "w").close()
    deadline = time.time() + 60
    while not all(os.path.exists(os.path.join(data_dir, "ready" + i)) for i in "01"):
      assert time.time() < deadline, "the other process never started"
      time.sleep(0.01)
    loaded = data._load_tfds("mnist", "train", 8, 1, data_dir)
    np.testing.assert_array_equal(loaded, images)
""")


def test_two_processes_decode_one_tfds_cache_at_once(tmp_path):
  _wait([subprocess.Popen([sys.executable, "-c", _DECODE_SCRIPT, str(tmp_path), str(process_id)],
                          cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
         for process_id in range(2)])
  assert os.listdir(tmp_path / "jdiff_cache") == ["mnist_train_8.npy"]  # no partial files left


# ~2 min on 2 shared CPU cores (two processes compile init and the train step).
@pytest.mark.slow
def test_two_processes_sync_only_at_boundaries_and_stop_together_on_sigterm(tmp_path):
  """Between log / checkpoint boundaries the train loop makes no cross-process collective (the
  host never waits for a peer or the device); SIGTERM to one process saves one step on both, a
  boundary, and both exit 143."""
  workdir, log = tmp_path / "run", tmp_path / "collectives"
  port = _free_port()
  command = [sys.executable, os.path.join(REPO, "tests", "cli_with_probes.py"),
             "--config=configs/quickstart.py:tiny", f"--workdir={workdir}", "--mode=train",
             "--config.training.num_steps=100000", "--config.training.log_every=10",
             "--config.training.checkpoint_every=30", "--config.distributed=True"]
  processes = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True,
                                env=_env(2, JDIFF_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                         JDIFF_NUM_PROCESSES="2", JDIFF_PROCESS_ID=str(index),
                                         JDIFF_COLLECTIVES_LOG=str(log)))
               for index in range(2)]
  try:
    deadline = time.time() + TIMEOUT_S
    while not (workdir / "checkpoints" / "60").exists():  # 60 steps trained: signal now
      assert time.time() < deadline and all(p.poll() is None for p in processes), "no step 60"
      time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)
    outputs = [process.communicate(timeout=TIMEOUT_S) for process in processes]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 143, stderr[-3000:]
  saved = [int(re.search(r"saved a checkpoint at step (\d+) after SIGTERM", stderr).group(1))
           for _, stderr in outputs]
  assert saved[0] == saved[1] and saved[0] % 10 == 0 and saved[0] >= 60, saved
  assert _steps(workdir)[-1] == saved[0]
  for index in range(2):
    with open(f"{log}.{index}") as f:
      calls = json.load(f)
    in_loop = [call for call in calls if call["step"] is not None]
    assert in_loop, calls  # the boundaries' own checks were recorded
    off_boundary = [call for call in in_loop if call["step"] % 10]
    assert not off_boundary, off_boundary
    # A log boundary costs one collective (the stop check); checkpoint steps add orbax's barriers.
    log_only = [call["step"] for call in in_loop if call["step"] % 30 and call["step"] != saved[0]]
    assert sorted(log_only) == sorted(set(log_only)), log_only


def _start_probed(workdir, num_steps, **probes):
  """tests/cli_with_probes.py --mode=train in 2 processes x 2 devices (probes: its variables)."""
  port = _free_port()
  command = [sys.executable, os.path.join(REPO, "tests", "cli_with_probes.py"),
             "--config=configs/quickstart.py:tiny", f"--workdir={workdir}", "--mode=train",
             f"--config.training.num_steps={num_steps}",
             f"--config.training.checkpoint_every={CHECKPOINT_EVERY}", "--config.distributed=True"]
  return [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=_env(2, JDIFF_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                               JDIFF_NUM_PROCESSES="2",
                                               JDIFF_PROCESS_ID=str(index), **probes))
          for index in range(2)]


def _finish(processes):
  try:
    outputs = [process.communicate(timeout=TIMEOUT_S) for process in processes]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  return [(process.returncode, stderr) for process, (_, stderr) in zip(processes, outputs)]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
  """A workdir with checkpoints 2 and 4 of the tiny config, trained in one process."""
  workdir = tmp_path_factory.mktemp("one_process") / "run"
  result = subprocess.run([sys.executable, "-m", "jdiff.main", "--config=configs/quickstart.py:tiny",
                           f"--workdir={workdir}", "--mode=train", "--config.training.num_steps=4",
                           f"--config.training.checkpoint_every={CHECKPOINT_EVERY}"],
                          cwd=REPO, env=_env(4), capture_output=True, text=True, timeout=TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _tree(directory):
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, dirs, names in os.walk(directory) for name in dirs + names)


def test_an_error_on_one_process_fails_both_and_moves_nothing(one_process_run, tmp_path):
  """A restore error that is not damage (here: permission denied, on process 1 only) fails both
  processes with one line and exit 1; no checkpoint is moved or marked."""
  workdir = tmp_path / "run"
  shutil.copytree(one_process_run, workdir)
  before = _tree(workdir / "checkpoints")
  results = _finish(_start_probed(workdir, 6, JDIFF_FAIL_RESTORE_ON_PROCESS="1"))
  for code, stderr in results:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, stderr[-3000:]
    assert "cannot read checkpoint step 4" in errors[0] and "nothing was moved" in errors[0]
  assert "permission denied" in [s for _, s in results][1]
  assert _tree(workdir / "checkpoints") == before


def test_a_damaged_latest_step_makes_both_processes_restore_the_same_earlier_one(
    one_process_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(one_process_run, workdir)
  for root, _, names in os.walk(workdir / "checkpoints" / "4" / "ema_params"):
    for name in names:
      if os.sep + "d" in root[len(str(workdir)):]:
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  # num_steps=2: both restore step 2, and there is nothing left to train (no compile needed).
  results = _finish(_start_probed(workdir, 2))
  for code, stderr in results:
    assert code == 0, stderr[-3000:]
    assert "nothing to train" in stderr and "step 2 >=" in stderr, stderr[-3000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "damaged-4"]
