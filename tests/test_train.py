"""Training end to end: multi-device equality, kill -9 resume, non-finite guard, config
validation and the CLI. (SIGTERM / SIGINT, damaged and mismatched checkpoints: test_never_lose_a_run.)"""

import glob
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from conftest import REPO, cli, on_four_devices, restore_train_state, tiny_config
from jdiff import builders
from jdiff import cpu
from jdiff import checkpoint as checkpoint_lib
from jdiff import config_lib
from jdiff import errors
from jdiff import parallel
from jdiff.drivers import train as train_lib


QUICKSTART = "--config=configs/quickstart.py:tiny"


def restore_params(config, workdir):
  """(latest TrainState or None, all checkpoint steps) of workdir."""
  checkpointer = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
  steps = checkpointer.all_steps()
  checkpointer.close()
  return (restore_train_state(config, workdir)[1] if steps else None), steps


def test_train_step_on_4_devices_equals_1_device():
  on_four_devices("train_step_equals_one_device")


def _wait_for(predicate, timeout_s, process):
  deadline = time.time() + timeout_s
  while time.time() < deadline:
    if predicate():
      return True
    if process.poll() is not None:
      return False
    time.sleep(0.2)
  return False


def _start_training(workdir, num_steps, checkpoint_every):
  args = [QUICKSTART, f"--workdir={workdir}", "--mode=train",
          f"--config.training.num_steps={num_steps}",
          f"--config.training.checkpoint_every={checkpoint_every}"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen([sys.executable, "-m", "jdiff.main", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _tiny_quickstart(num_steps):
  config = tiny_config()
  config.training.num_steps = num_steps
  return config


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
  num_steps = 40
  straight = tmp_path / "straight"
  result = cli([QUICKSTART, f"--workdir={straight}", "--mode=train",
                f"--config.training.num_steps={num_steps}", "--config.training.checkpoint_every=10"],
               timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]

  killed = tmp_path / "killed"
  process = _start_training(killed, num_steps, 10)
  first_checkpoint = killed / "checkpoints" / "10"
  assert _wait_for(first_checkpoint.exists, 300, process), "no checkpoint appeared"
  process.send_signal(signal.SIGKILL)
  process.wait()
  _, steps = restore_params(_tiny_quickstart(num_steps), str(killed))
  assert steps and steps[-1] < num_steps, steps  # it really was interrupted
  result = cli([QUICKSTART, f"--workdir={killed}", "--mode=train",
                f"--config.training.num_steps={num_steps}", "--config.training.checkpoint_every=10"],
               timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]

  config = _tiny_quickstart(num_steps)
  state_a, _ = restore_params(config, str(straight))
  state_b, _ = restore_params(config, str(killed))
  assert int(state_a.step) == int(state_b.step) == num_steps
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state_a.params),
               jax.device_get(state_b.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state_a.ema_params),
               jax.device_get(state_b.ema_params))


@pytest.mark.parametrize("scale", [0.01, 10.0])  # norm below and above max_norm = 1
def test_cpu_clip_by_global_norm_is_optax_s_with_or_without_the_norm_given(scale):
  """CpuCompute.clip_by_global_norm: optax's clipping (bitwise where it does not clip, to float
  rounding where it does), whether the train step hands it the norm or it computes the norm
  itself, with optax's (empty) state, so checkpoints keep their structure; a wrong norm handed in
  changes the result (it is used, not recomputed)."""
  rng = np.random.default_rng(0)
  grads = {"a": scale * rng.standard_normal((3, 4)).astype(np.float32),
           "b": {"c": scale * rng.standard_normal(5).astype(np.float32)}}
  ours, theirs = cpu.CpuCompute().clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0)
  state = ours.init(grads)
  assert jax.tree.structure(state) == jax.tree.structure(theirs.init(grads))
  want, _ = theirs.update(grads, theirs.init(grads))
  norm = optax.tree.norm(grads)
  assert (norm > 1) == (scale > 1)
  for given in ({}, {"grad_norm": norm}):
    have, _ = ours.update(grads, state, **given)
    if scale > 1:
      jax.tree.map(lambda h, w: np.testing.assert_allclose(h, w, rtol=3e-7, atol=0), have, want)
      np.testing.assert_allclose(optax.tree.norm(have), 1.0, rtol=1e-6)
    else:
      jax.tree.map(np.testing.assert_array_equal, have, want)
  if scale > 1:
    halved, _ = ours.update(grads, state, grad_norm=2 * norm)
    np.testing.assert_allclose(optax.tree.norm(halved), 0.5, rtol=1e-6)


def test_non_finite_loss_keeps_the_state_and_stops_the_run(tmp_path, monkeypatch):
  config = tiny_config()
  mesh = parallel.make_mesh()
  model, diffusion = builders.build_model(config), builders.build_diffusion(config)
  optimizer = builders.build_optimizer(config.training)
  state = builders.build_state(config, model, optimizer, mesh)
  # NaN in one weight makes the loss NaN: the step must return the old state unchanged.
  poisoned = jax.tree.map(lambda x: x, state)
  params = jax.tree.map(np.array, jax.device_get(poisoned.params))
  params["conv_in"]["Conv_0"]["kernel"][0, 0, 0, 0] = np.nan
  poisoned = poisoned.replace(params=jax.device_put(params, parallel.replicated(mesh)))
  step = train_lib.make_train_step(config, model, diffusion, optimizer, mesh)
  images = np.zeros((8, 8, 8, 1), np.uint8)
  before = jax.device_get(poisoned)  # (the step donates poisoned)
  new_state, metrics = step(poisoned, jax.device_put(images, parallel.batch_sharding(mesh)))
  assert not bool(metrics["finite"])
  assert int(new_state.step) == 0
  # Every part of the state, optimizer moments and EMA included, is what it was.
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(new_state))

  # In the loop: a NaN loss stops the run with the error, and no checkpoint holds non-finite params.
  from jdiff import objectives  # pylint: disable=g-import-not-at-top
  original = objectives.example_losses
  monkeypatch.setattr(objectives, "example_losses",
                      lambda *a, **k: original(*a, **k) * np.nan)
  config.training.num_steps = 4
  with pytest.raises(errors.NonFiniteLossError, match="non-finite"):
    train_lib.train(config, str(tmp_path))
  state, steps = restore_params(config, str(tmp_path))
  if state is not None:
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))


@pytest.mark.parametrize("override, message", [
    ("--config.model.ch=0", "config.model.ch=0: must be a positive integer"),
    ("--config.diffusion.beta_schedule=quad", "config.diffusion.beta_schedule='quad': must be one of"),
    ("--config.training.ema_decay=1.5", "config.training.ema_decay=1.5: must be a number in [0.0, 1.0)"),
    ("--config.data.source=imagenet", "config.data.source='imagenet': must be one of"),
    ("--config.model.num_groups=5", "config.model.num_groups=5: must be a divisor"),
    ("--config.depth.dispatch=cpu", "config.depth.dispatch='cpu': must be one of"),
])
def test_bad_config_values_exit_2_with_one_line(override, message):
  result = cli([QUICKSTART, "--mode=summary", override], timeout=300)
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], result.stderr[-1000:]


def test_validate_accepts_every_shipped_quickstart_config():
  config_lib.validate(tiny_config())


def test_missing_data_path_is_one_clear_line(tmp_path):
  result = cli([QUICKSTART, f"--workdir={tmp_path}", "--mode=train", "--config.data.source=npz",
                f"--config.data.path={tmp_path}/nope.npz"], timeout=300)
  assert result.returncode == 2
  assert "error: config.data.path=" in result.stderr and "does not exist" in result.stderr


def test_cli_train_sample_summary_end_to_end(tmp_path):
  result = cli([QUICKSTART, f"--workdir={tmp_path}", "--mode=train",
                "--config.training.num_steps=4"], timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  result = cli([QUICKSTART, f"--workdir={tmp_path}", "--mode=sample"], timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  samples = np.load(tmp_path / "samples" / "samples.npz")["images"]
  assert samples.shape == (4, 8, 8, 1) and samples.dtype == np.uint8
  assert (tmp_path / "samples" / "grid.png").exists()
  result = cli([QUICKSTART, "--mode=summary"], timeout=300)
  assert result.returncode == 0
  count = int(result.stdout.strip().splitlines()[-1].split(":")[1])
  params = jax.eval_shape(lambda: builders.init_params(
      builders.build_model(tiny_config()), tiny_config(), jax.random.key(0)))
  assert count == sum(x.size for x in jax.tree.leaves(params))


def test_sample_without_checkpoint_says_train_first(tmp_path):
  result = cli([QUICKSTART, f"--workdir={tmp_path}", "--mode=sample"], timeout=300)
  assert result.returncode == 1 and "train first" in result.stderr


def test_cifar10_config_has_35_7m_parameters():
  config = config_lib.load_config(os.path.join(REPO, "configs", "cifar10_ddpm.py"))
  assert builders.parameter_count(config) == 35_746_307


def test_every_config_and_its_tiny_variant_load_and_validate():
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    for spec in (path, path + ":tiny"):
      config = config_lib.load_config(spec)
      assert config.model.kind in ("unet", "sngan", "diffwave"), spec
    assert config.diffusion.num_timesteps == 20 and config.training.num_steps == 6, path


def test_ema_warmup_decay_and_first_update():
  """ema_warmup: decay min(ema_decay, (1 + s) / (10 + s)); off: the plain ema_decay (Ho's code).
  The first update (s = 0, decay 0.1) leaves 0.1 of the initial params in the EMA."""
  assert train_lib.ema_decay_of_step(0.999, False, 0) == 0.999
  np.testing.assert_allclose([float(train_lib.ema_decay_of_step(0.999, True, s))
                              for s in (0, 10, 90, 10_000)], [0.1, 11 / 20, 91 / 100, 0.999],
                             rtol=1e-6)
  for warmup, kept in ((True, 0.1), (False, 0.999)):
    config = tiny_config()
    config.training.ema_decay = 0.999
    config.training.ema_warmup = warmup
    mesh = parallel.make_mesh()
    model = builders.build_model(config)
    optimizer = builders.build_optimizer(config.training)
    state = builders.build_state(config, model, optimizer, mesh)
    initial = jax.device_get(state.params)
    step = train_lib.make_train_step(config, model, builders.build_diffusion(config), optimizer,
                                     mesh)
    images = np.random.default_rng(0).integers(
        0, 256, (train_lib.images_per_step(config),) + builders.image_shape(config), dtype=np.uint8)
    state, _ = step(state, images)
    jax.tree.map(lambda ema, p0, p1: np.testing.assert_allclose(
        ema, kept * p0 + (1 - kept) * p1, rtol=1e-5, atol=1e-7),
        jax.device_get(state.ema_params), initial, jax.device_get(state.params))


def test_train_result_counts_this_runs_steps_and_their_time(tmp_path):
  config = tiny_config()
  config.training.update(num_steps=3, checkpoint_every=3)
  first = train_lib.train(config, str(tmp_path))
  assert first.steps_trained == 3 and first.stepping_seconds > 0
  config.training.num_steps = 5
  resumed = train_lib.train(config, str(tmp_path))
  assert resumed.step == 5 and resumed.steps_trained == 2 and resumed.stepping_seconds > 0
  nothing = train_lib.train(config, str(tmp_path))
  assert nothing.steps_trained == 0 and nothing.stepping_seconds == 0.0
