"""jdiff.checkpoint in one process: named items, old single-item checkpoints, what a mismatch
names, the workdir lock."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from jdiff import builders
from jdiff import checkpoint as checkpoint_lib
from jdiff import config_lib
from jdiff import errors
from jdiff import parallel
from jdiff.drivers import train as train_lib


def _setup(config):
  mesh = parallel.make_mesh()
  model = builders.build_model(config)
  optimizer = builders.build_optimizer(config.training)
  return mesh, model, optimizer


@pytest.fixture(scope="module")
def state():
  """A tiny train state whose params differ from a fresh init (so a restore is visible)."""
  config = tiny_config()
  mesh, model, optimizer = _setup(config)
  fresh = builders.build_state(config, model, optimizer, mesh)
  return fresh.replace(
      step=fresh.step + 7,
      params=jax.tree.map(lambda x: x + 1.0, fresh.params),
      ema_params=jax.tree.map(lambda x: x + 2.0, fresh.params))


def _save_named(workdir, config, state, step):
  checkpointer = checkpoint_lib.Checkpointer(str(workdir), 3)
  identity = config_lib.checkpoint_identity(config, "train")
  checkpointer.save(step, builders.checkpoint_items(state),
                    checkpoint_lib.identity_record(config.to_dict(), identity))
  checkpointer.close()


def _save_legacy(workdir, state, step):
  """A checkpoint as jdiff wrote them before named items: one whole TrainState, item 'default'."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  manager.close()


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_named_items_restore_for_training_and_sampling(tmp_path, state):
  config = tiny_config()
  _save_named(tmp_path, config, state, 7)
  assert {"config", "ema_params", "state"} <= set(os.listdir(tmp_path / "checkpoints" / "7"))
  mesh, model, optimizer = _setup(config)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), 3)
  restored = train_lib.restore_or_init(config, checkpointer, model, optimizer, mesh)
  checkpointer.close()
  assert int(restored.step) == 7
  _assert_trees_equal(restored, state)

  # Sampling reads the EMA params alone: with the optimizer's item gone it still works.
  shutil.rmtree(tmp_path / "checkpoints" / "7" / "state")
  params, step = builders.restore_ema_params(config, str(tmp_path), model, mesh)
  assert step == 7
  _assert_trees_equal(params, state.ema_params)


def test_old_single_item_checkpoints_still_load(tmp_path, state):
  config = tiny_config()
  _save_legacy(str(tmp_path), state, 7)
  mesh, model, optimizer = _setup(config)
  params, step = builders.restore_ema_params(config, str(tmp_path), model, mesh)
  assert step == 7
  _assert_trees_equal(params, state.ema_params)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), 3)
  restored = train_lib.restore_or_init(config, checkpointer, model, optimizer, mesh)
  _assert_trees_equal(restored, state)
  # Training on saves named items beside the old one.
  checkpointer.save(8, builders.checkpoint_items(restored),
                    checkpoint_lib.identity_record(config.to_dict(), {}))
  checkpointer.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["7", "8"]
  assert os.path.isdir(tmp_path / "checkpoints" / "8" / "ema_params")


def test_an_old_checkpoint_of_another_model_is_a_mismatch_naming_the_arrays(tmp_path, state):
  _save_legacy(str(tmp_path), state, 7)
  config = tiny_config()
  config.model.ch = 16
  mesh, model, optimizer = _setup(config)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), 3)
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"hold another model: .*kernel is \(3, 3, 1, 8\) there, "
                           r"\(3, 3, 1, 16\) here"):
    train_lib.restore_or_init(config, checkpointer, model, optimizer, mesh)
  checkpointer.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["7"]  # a mismatch moves nothing


def test_a_named_checkpoint_of_another_config_names_the_fields(tmp_path, state):
  config = tiny_config()
  _save_named(tmp_path, config, state, 7)
  other = tiny_config()
  other.training.timestep_sampler = "loss_aware"
  other.diffusion.beta_end = 0.03
  other.training.learning_rate = 1e-3  # may change between runs: not named
  other.model.remat = True             # how it computes: not named
  mesh, model, optimizer = _setup(other)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), 3)
  with pytest.raises(errors.CheckpointMismatchError) as raised:
    train_lib.restore_or_init(other, checkpointer, model, optimizer, mesh)
  checkpointer.close()
  message = str(raised.value)
  assert "\n" not in message
  assert "diffusion.beta_end=0.02 there, 0.03 here" in message
  assert "training.timestep_sampler='uniform' there, 'loss_aware' here" in message
  assert "learning_rate" not in message and "remat" not in message


def test_checkpoint_identity_fields():
  config = tiny_config()
  train_fields = config_lib.checkpoint_identity(config, "train")
  sample_fields = config_lib.checkpoint_identity(config, "sample")
  assert {"model.ch", "diffusion.num_timesteps", "data.image_size", "training.loss",
          "depth.training"} <= set(train_fields)
  assert "training.loss" not in sample_fields and "model.ch" in sample_fields
  assert not {"model.remat", "model.dtype", "training.batch_size", "training.num_steps",
              "training.learning_rate", "depth.power"} & set(train_fields)
  assert not any(field.startswith("gan.") for field in train_fields)  # a U-Net has no GAN
  # Either fixed variance samples the same eps-model; a learned one has other output channels.
  assert config.diffusion.variance_type == "fixedlarge"
  assert "diffusion.variance_type" not in set(train_fields) | set(sample_fields)
  learned = config.copy_and_resolve_references()
  learned.diffusion.variance_type, learned.training.loss = "learned_range", "hybrid"
  learned_identity = config_lib.checkpoint_identity(learned, "sample")
  assert learned_identity["diffusion.variance_type"] == "learned_range"
  config.depth.training = "bucketed"
  assert "depth.power" in config_lib.checkpoint_identity(config, "train")
  config.model.kind = "sngan"
  assert {"gan.g_ch", "gan.n_dis"} <= set(config_lib.checkpoint_identity(config, "train"))
  with pytest.raises(ValueError, match="purpose"):
    config_lib.checkpoint_identity(config, "evaluate")


def test_config_differences_compare_only_recorded_fields():
  stored = {"model.ch": 8, "model.ch_mult": [1, 2]}
  assert checkpoint_lib.config_differences(stored, {"model.ch": 8, "model.ch_mult": (1, 2),
                                                    "model.new_field": 3}) == []
  assert checkpoint_lib.config_differences(stored, {"model.ch": 16, "model.ch_mult": (1, 2)}) == [
      "model.ch=8 there, 16 here"]


def test_workdir_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
  with checkpoint_lib.WorkdirLock(str(tmp_path)):
    with pytest.raises(errors.WorkdirBusyError, match=f"pid {os.getpid()} on "):
      with checkpoint_lib.WorkdirLock(str(tmp_path)):
        pass
  with checkpoint_lib.WorkdirLock(str(tmp_path)):  # free again
    pass


def test_lock_on_an_unwritable_workdir_is_a_workdir_error(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(errors.WorkdirError, match="cannot write to --workdir="):
    with checkpoint_lib.WorkdirLock(str(tmp_path / "file" / "run")):
      pass


def test_saving_a_step_left_by_another_run_sets_the_old_one_aside(tmp_path, state):
  config = tiny_config()
  _save_named(tmp_path, config, state, 7)
  before = sorted(os.listdir(tmp_path / "checkpoints" / "7" / "ema_params"))
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), 3)
  newer = state.replace(ema_params=jax.tree.map(lambda x: x * 0.0, state.ema_params))
  checkpointer.save(7, builders.checkpoint_items(newer),
                    checkpoint_lib.identity_record(config.to_dict(), {}))
  checkpointer.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["7", "replaced-7"]
  assert sorted(os.listdir(tmp_path / "checkpoints" / "replaced-7" / "ema_params")) == before
  mesh, model, _ = _setup(config)
  params, _ = builders.restore_ema_params(config, str(tmp_path), model, mesh)
  _assert_trees_equal(params, newer.ema_params)
