"""A normal CLI run's console: no TensorFlow C++ INFO notices, no jax backend-probe lines."""

import os
import subprocess
import sys

from conftest import REPO, TINY

NOISE = ("oneDNN custom operations", "cpu_feature_guard", "Unable to initialize backend",
         "All log messages before absl::InitializeLog")


def test_a_train_run_prints_no_startup_noise(tmp_path):
  # Without TF_CPP_MIN_LOG_LEVEL (which conftest.cli sets): what a user's shell gives.
  env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
  result = subprocess.run(
      [sys.executable, "-m", "jdiff.main", f"--config={TINY}", f"--workdir={tmp_path / 'run'}",
       "--mode=train", "--config.training.num_steps=2", "--config.training.checkpoint_every=2"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "model at step 2" in result.stdout
  assert "train" in result.stderr  # the run's own log lines still come through
  for line in result.stderr.splitlines():
    assert not any(noise in line for noise in NOISE), line


def test_import_notice_filter_keeps_every_other_line(capfd):
  from jdiff import console  # pylint: disable=g-import-not-at-top
  with console._stderr_fd_without(console.TF_IMPORT_NOTICES):  # pylint: disable=protected-access
    # Written to file descriptor 2 directly, as TensorFlow's C++ logging does.
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written\n")
    os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see ...\n")
    os.write(2, b"W0000 real_warning.cc:1] a real warning\n")
    os.write(2, b"E0000 real_error.cc:2] a real error\n")
  assert capfd.readouterr().err.splitlines() == [
      "W0000 real_warning.cc:1] a real warning", "E0000 real_error.cc:2] a real error"]
