"""--mode=bench and --mode=train run without TensorFlow, tensorflow_datasets and clu (as on the
lent GPU machines): launch/without_tensorflow.py hides them."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY

RUNNER = os.path.join(REPO, "launch", "without_tensorflow.py")


def run_blocked(args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
  return subprocess.run([sys.executable, RUNNER, f"--config={TINY}", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_the_runner_blocks_tensorflow():
  for module in ("tensorflow", "clu.metric_writers", "tensorflow_datasets"):
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(RUNNER)!r}); "
         f"import without_tensorflow; without_tensorflow.hide(); import {module}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, result.stderr[-1000:]


@pytest.mark.slow  # two CLI runs (~2 min on 2 contended cores)
def test_train_and_bench_run_without_tensorflow_and_clu(tmp_path):
  train = run_blocked([f"--workdir={tmp_path / 'train'}", "--mode=train",
                       "--config.training.num_steps=4", "--config.training.log_every=2"])
  assert train.returncode == 0, train.stderr[-3000:]
  records = [json.loads(line) for line in open(tmp_path / "train" / "metrics.jsonl")]
  losses = {r["step"]: r["loss"] for r in records if "loss" in r}
  assert 2 in losses and max(losses) == 4 and all(map(math.isfinite, losses.values())), records
  bench = run_blocked([f"--workdir={tmp_path / 'bench'}", "--mode=bench"])
  assert bench.returncode == 0, bench.stderr[-3000:]
  assert json.load(open(tmp_path / "bench" / "bench.json"))["train_step"]["flops"] > 0
