"""Never lose a run, end to end through the command line on a tiny quickstart config.

Each data-loss case lists the checkpoint files (with their hashes) before and after, so a test
fails if anything a user had is changed or deleted. Every bad input is one `error:` line with
the documented exit code, and no traceback.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import (REPO, assert_one_error_line, cli, error_lines, restore_train_state, snapshot,
                      tiny_config)
from jdiff import errors

QUICKSTART = "--config=configs/quickstart.py:tiny"
STEPS, EVERY = 6, 3


def train_args(workdir, *extra, num_steps=STEPS, every=EVERY):
  return [QUICKSTART, f"--workdir={workdir}", "--mode=train",
          f"--config.training.num_steps={num_steps}",
          f"--config.training.checkpoint_every={every}", *extra]


def override(args, field, value):
  """args with --config.<field>=<value>, replacing an earlier value of the field (a repeated
  override is refused)."""
  flag = f"--config.{field}="
  return [arg for arg in args if not arg.startswith(flag)] + [f"{flag}{value}"]


def damage(step_dir):
  """Overwrites every array chunk of a finished checkpoint step (its commit record stays)."""
  count = 0
  for root, _, names in os.walk(step_dir):
    if os.sep + "d" in root[len(str(step_dir)):]:
      for name in names:
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
        count += 1
  assert count, f"nothing to damage in {step_dir}"


def restore(workdir, num_steps=STEPS):
  """(step, TrainState) of the latest good checkpoint, read in this process."""
  config = tiny_config()
  config.training.num_steps = num_steps
  return restore_train_state(config, workdir)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir trained to step 6 (checkpoints 3 and 6), copied by each test that uses it."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  result = cli(train_args(workdir), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(trained, copy)
  return copy


# -- 1. A changed config is refused; --from_scratch moves the old run aside ------------------------


def test_changed_model_or_objective_is_refused_and_nothing_changes(workdir):
  before = snapshot(workdir / "checkpoints")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  result = cli(train_args(workdir, "--config.training.loss=iwdiff", num_steps=12), timeout=600)
  assert_one_error_line(result, 2, "training.loss='simple' there, 'iwdiff' here", "--from_scratch")
  assert snapshot(workdir / "checkpoints") == before

  # Sampling with another model is refused too (instead of sampling garbage or "no checkpoint").
  args = override([QUICKSTART, f"--workdir={workdir}", "--mode=sample"],
                  "diffusion.num_timesteps", 30)
  assert_one_error_line(cli(args, timeout=600), 2, "diffusion.num_timesteps=20 there, 30 here")

  # --from_scratch moves the old checkpoints aside, intact, and says where.
  result = cli(train_args(workdir, "--config.training.loss=iwdiff", "--from_scratch"), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  (moved,) = [name for name in os.listdir(workdir) if name.startswith("checkpoints.replaced-")]
  assert moved in result.stderr
  assert snapshot(workdir / moved) == before
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert snapshot(workdir / "checkpoints") != before


def test_changed_model_width_names_the_field_in_one_line(workdir):
  before = snapshot(workdir / "checkpoints")
  result = cli(override(train_args(workdir, num_steps=12), "model.ch", 16), timeout=600)
  assert_one_error_line(result, 2, "model.ch=8 there, 16 here")
  assert snapshot(workdir / "checkpoints") == before


# -- 2, 3. A damaged final checkpoint is moved aside and saved again ------------------------------


def test_damaged_final_checkpoint_is_moved_aside_and_saved_again(workdir):
  good_3 = snapshot(workdir / "checkpoints" / "3")
  damage(workdir / "checkpoints" / "6")
  damaged_6 = snapshot(workdir / "checkpoints" / "6")
  result = cli(train_args(workdir), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  warnings = [line for line in result.stderr.splitlines() if "is damaged" in line]
  assert len(warnings) == 1 and "damaged-6" in warnings[0] and len(warnings[0]) < 500, warnings
  assert "model at step 6" in result.stdout
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6", "damaged-6"]
  assert snapshot(workdir / "checkpoints" / "damaged-6") == damaged_6  # kept, as it was
  assert snapshot(workdir / "checkpoints" / "3") == good_3
  # The new step 6 restores, and sampling uses it.
  assert restore(workdir)[0] == 6
  result = cli([QUICKSTART, f"--workdir={workdir}", "--mode=sample"], timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert int(np.load(workdir / "samples" / "samples.npz")["step"]) == 6


def test_rerun_of_a_finished_run_saves_nothing_new_and_says_so(workdir):
  before = snapshot(workdir / "checkpoints")
  result = cli(train_args(workdir), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "nothing to train" in result.stderr and "model at step 6" in result.stdout
  assert snapshot(workdir / "checkpoints") == before


# -- 4. An empty latest step folder ----------------------------------------------------------------


def test_empty_latest_step_folder_is_set_aside_and_training_continues(workdir):
  os.makedirs(workdir / "checkpoints" / "9")
  # Sampling reads past it (and moves nothing).
  result = cli([QUICKSTART, f"--workdir={workdir}", "--mode=sample"], timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert int(np.load(workdir / "samples" / "samples.npz")["step"]) == 6
  assert os.path.isdir(workdir / "checkpoints" / "9")
  result = cli(train_args(workdir, num_steps=9), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "damaged-9" in result.stderr and "model at step 9" in result.stdout
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6", "9", "damaged-9"]
  assert restore(workdir, 9)[0] == 9


# -- 6. Every checkpoint damaged -------------------------------------------------------------------


def test_all_checkpoints_damaged_is_one_line_and_no_silent_restart(workdir):
  for step in ("3", "6"):
    damage(workdir / "checkpoints" / step)
  result = cli(train_args(workdir), timeout=600)
  assert_one_error_line(result, 1, "no restorable checkpoint", "--from_scratch")
  warnings = [line for line in result.stderr.splitlines() if "is damaged" in line]
  assert len(warnings) == 2 and all(len(line) < 500 for line in warnings), warnings
  assert len(result.stderr) < 4000, result.stderr  # no kilobyte-long tensorstore specs
  assert sorted(os.listdir(workdir / "checkpoints")) == ["damaged-3", "damaged-6"]
  # A second try still refuses (the damaged ones are not forgotten) ...
  assert_one_error_line(cli(train_args(workdir), timeout=600), 1, "damaged-3, damaged-6")
  # ... until the user asks for a new run.
  result = cli(train_args(workdir, "--from_scratch"), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert restore(workdir)[0] == 6


# -- 5, 7, 8. Signals and the workdir lock ---------------------------------------------------------


def _start(args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen([sys.executable, "-m", "jdiff.main", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, process, timeout_s=300):
  deadline = time.time() + timeout_s
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(path):
      return True
    time.sleep(0.1)
  return False


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_reports_the_step_and_exit_code(tmp_path, signum, code):
  process = _start(train_args(tmp_path, num_steps=100_000, every=5))
  assert _wait_for(tmp_path / "checkpoints" / "5", process), "no checkpoint appeared"
  if signum == signal.SIGTERM:
    # 8. A second trainer on the same workdir is refused with one line naming the holder.
    second = cli(train_args(tmp_path, num_steps=100_000, every=5), timeout=600)
    assert_one_error_line(second, 2, "in use by another trainer", f"pid {process.pid} on ")
  process.send_signal(signum)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == code, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  name = signal.Signals(signum).name
  (line,) = [line for line in stdout.splitlines() if line.startswith("stopped by")]
  reached = int(line.split(" at step ")[1].split()[0])
  assert line.startswith(f"stopped by {name} at step {reached} of 100000"), line
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert steps[-1] == reached and reached >= 5, (steps, reached)
  assert restore(tmp_path, 100_000)[0] == reached


# -- 9, 12, 16. Bad command lines ------------------------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (["--config.model.ch_mult=(1,2)", "--config.model.ch_mult=1,2"],
     "--config.model.ch_mult is given twice ('(1,2)' and '1,2')"),
    (["--config.model.chh=3"], '--config.model.chh: no such field in configs/quickstart.py:tiny '
                               '(did you mean "ch"?)'),
    (["--config.model.ch=abc"], "--config.model.ch=abc: invalid literal for int()"),
])
def test_bad_overrides_are_one_line(args, fragment):
  assert_one_error_line(cli([QUICKSTART, "--mode=summary", *args], timeout=300), 2, fragment)


@pytest.mark.parametrize("text, fragment", [
    (None, "cannot load it ([Errno 2] No such file or directory"),
    ("def get_config(:\n", "SyntaxError: invalid syntax (line 1)"),
    ("def get_config():\n  raise ValueError('no such preset')\n",
     "get_config() raised ValueError: no such preset"),
])
def test_bad_config_files_are_one_line(tmp_path, text, fragment):
  path = tmp_path / "my_config.py"
  if text is not None:
    path.write_text(text)
  result = cli([f"--config={path}", "--mode=summary"], timeout=300)
  assert_one_error_line(result, 2, f"--config={path}", fragment)


# -- 10. Batch size and device count --------------------------------------------------------------


def test_batch_not_divisible_by_devices_is_one_line(tmp_path):
  result = cli(override(train_args(tmp_path / "run"), "training.batch_size", 6), timeout=600,
               env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert_one_error_line(result, 2, "config.training.batch_size=6: must be a multiple of the "
                                   "device count (4)")
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


# -- 17. Reading modes on a mistyped workdir -------------------------------------------------------


@pytest.mark.parametrize("mode", ["sample", "evaluate"])
def test_reading_a_mistyped_workdir_creates_nothing(tmp_path, mode):
  missing = tmp_path / "typo"
  result = cli([QUICKSTART, f"--workdir={missing}", f"--mode={mode}",
                "--config.evaluation.metrics=('digits_fd',)", "--config.evaluation.num_samples=4"],
               timeout=600)
  assert_one_error_line(result, 1, "no checkpoint in", "train first")
  assert not os.path.exists(missing)


# -- 15. Disk full and read-only workdirs ---------------------------------------------------------


def _unshare_works():
  try:
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                          capture_output=True, timeout=30).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


needs_unshare = pytest.mark.skipif(not _unshare_works(),
                                   reason="needs unshare (user + mount namespaces) for a small tmpfs")


def _in_small_filesystem(mount_point, size, script):
  """Runs a shell script with a tmpfs of `size` mounted at mount_point (a private mount
  namespace: nothing outside sees it)."""
  command = f"mount -t tmpfs -o size={size} tmpfs {mount_point} && {script}"
  return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", command],
                        cwd=REPO, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def _quoted(args):
  return " ".join("'" + arg.replace("'", "'\\''") + "'" for arg in args)


def _train_on_small_filesystem(trained, tmp_path, size, prepare, after="true"):
  """Copies the trained run onto a tmpfs of `size`, runs the shell `prepare` there, trains on to
  step 12 (EXIT=<code> in stdout), then runs `after` in the copy's checkpoints folder."""
  mount = tmp_path / "disk"
  mount.mkdir()
  run = mount / "run"
  command = _quoted([sys.executable, "-m", "jdiff.main", *train_args(run, num_steps=12)])
  script = (f"cp -r '{trained}' '{run}' && {prepare.format(mount=mount)} && cd '{REPO}' && "
            f"{command}; echo EXIT=$?; cd '{run}/checkpoints' && {after}")
  return run, _in_small_filesystem(mount, size, script)


@needs_unshare
def test_full_disk_is_one_line_and_earlier_checkpoints_stay_intact(trained, tmp_path):
  _, result = _train_on_small_filesystem(
      trained, tmp_path, "8m", prepare="(dd if=/dev/zero of='{mount}/filler' bs=64k 2>/dev/null; true)",
      after="find 3 6 -type f -exec sha256sum {} +")
  assert "EXIT=1" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
  lines = error_lines(result)
  assert len(lines) == 1 and "No space left on device" in lines[0], result.stderr[-3000:]
  hashes = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines()
            if len(line.split()) == 2 and len(line.split()[0]) == 64}  # sha256sum: "<hash>  3/..."
  expected = snapshot(trained / "checkpoints")
  assert hashes == {k: v for k, v in expected.items() if k.split(os.sep)[0] in ("3", "6")}


@needs_unshare
def test_read_only_workdir_is_one_line(trained, tmp_path):
  run, result = _train_on_small_filesystem(trained, tmp_path, "64m",
                                           prepare="mount -o remount,ro '{mount}'")
  assert "EXIT=1" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
  lines = error_lines(result)
  assert len(lines) == 1 and "Read-only file system" in lines[0], result.stderr[-3000:]
  assert str(run) in lines[0]


# -- The fault test: kill -9 at random moments while checkpoints are being written ----------------


@pytest.mark.slow  # ~15 s a kill on 2 cores; tests/test_train.py keeps one kill -9 in the default suite
def test_kills_during_checkpoint_writing_resume_to_the_uninterrupted_result(trained, tmp_path):
  """Checkpoints every step, so a kill lands inside a save most of the time; after each kill the
  workdir resumes from a valid step, and the end result equals the uninterrupted run."""
  num_kills = int(os.environ.get("JDIFF_FAULT_TEST_KILLS", "5"))
  rng = random.Random(0)
  workdir = tmp_path / "run"
  reached = []
  for _ in range(num_kills):
    process = _start(train_args(workdir, num_steps=STEPS, every=1))
    checkpoints = workdir / "checkpoints"
    started = _wait_for(checkpoints, process) and any(
        _wait_for(checkpoints / str(step), process, timeout_s=60) for step in range(1, STEPS + 1))
    time.sleep(rng.uniform(0.0, 0.6))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert started or process.returncode == 0
    step, _ = restore(workdir)
    reached.append(step)
  result = cli(train_args(workdir, num_steps=STEPS, every=1), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  step_a, state_a = restore(trained)
  step_b, state_b = restore(workdir)
  assert step_a == step_b == STEPS, (step_a, step_b, reached)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state_a.params),
               jax.device_get(state_b.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state_a.ema_params),
               jax.device_get(state_b.ema_params))


def test_error_types_carry_the_documented_exit_codes():
  assert errors.ConfigError.exit_code == 2 and errors.DataError.exit_code == 2
  assert errors.CheckpointMismatchError.exit_code == 2 and errors.WorkdirBusyError.exit_code == 2
  assert errors.CheckpointMissingError.exit_code == 1 and errors.WorkdirError.exit_code == 1
  assert errors.NonFiniteLossError.exit_code == 3
  assert errors.EXIT_INTERRUPTED == {"SIGINT": 130, "SIGTERM": 143}
