"""--mode=train for model.kind='sngan': SNGAN training (the surrogate of surrogate diffusion).

Hinge loss, n_dis discriminator steps per generator step, Adam(2e-4, 0.0, 0.9); checkpointed,
resumed, refused and interrupted like the diffusion models (jdiff.drivers.train)."""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions

from jdiff import builders
from jdiff import checkpoint as checkpoint_lib
from jdiff import config_lib
from jdiff import compute as compute_lib
from jdiff import data as data_lib
from jdiff import parallel
from jdiff.builders import GANState
from jdiff.drivers import train as train_lib
from jdiff.models import gan


def make_train_step(config, generator, discriminator, optimizer) -> Callable:
  """(state, real uint8 [n_dis, B, H, W, C]) -> (state, metrics): n_dis D updates, one G update."""
  base_key = jax.random.key(config.seed)
  z_dim = config.gan.z_dim

  def generate(g_params, g_stats, rng, batch_size):
    z = jax.random.normal(rng, (batch_size, z_dim))
    images, updates = generator.apply({"params": g_params, "batch_stats": g_stats}, z,
                                      train=True, mutable=["batch_stats"])
    return images, updates["batch_stats"]

  def discriminate(d_params, d_stats, images):
    logits, updates = discriminator.apply({"params": d_params, "batch_stats": d_stats}, images,
                                          update_stats=True, mutable=["batch_stats"])
    return logits, updates["batch_stats"]

  def d_loss_fn(d_params, d_stats, real, fake):
    # Real and fake in one call, so the power iteration runs once per update.
    logits, d_stats = discriminate(d_params, d_stats, jnp.concatenate([real, fake]))
    real_logits, fake_logits = jnp.split(logits, 2)
    loss = jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
    return loss, d_stats

  def g_loss_fn(g_params, state, rng, batch_size):
    fake, g_stats = generate(g_params, state.g_stats, rng, batch_size)
    logits = discriminator.apply({"params": state.d_params, "batch_stats": state.d_stats}, fake)
    return -jnp.mean(logits), g_stats

  def train_step(state: GANState, real_batches):
    rng = jax.random.fold_in(base_key, state.step)
    batch_size = real_batches.shape[1]

    def d_update(carry, inputs):
      d_params, d_stats, d_opt, g_stats = carry
      real, i = inputs
      fake, g_stats = generate(state.g_params, g_stats, jax.random.fold_in(rng, i), batch_size)
      (loss, d_stats), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
          d_params, d_stats, data_lib.to_float(real), jax.lax.stop_gradient(fake))
      updates, d_opt = optimizer.update(grads, d_opt, d_params)
      return (optax.apply_updates(d_params, updates), d_stats, d_opt, g_stats), loss

    n_dis = real_batches.shape[0]
    # Unrolled (n_dis is small): XLA:CPU runs convolutions inside a scan's loop very slowly.
    carry, d_losses = (state.d_params, state.d_stats, state.d_opt, state.g_stats), []
    for i in range(n_dis):
      carry, loss = d_update(carry, (real_batches[i], i))
      d_losses.append(loss)
    d_params, d_stats, d_opt, g_stats = carry
    d_losses = jnp.stack(d_losses)
    state = state.replace(d_params=d_params, d_stats=d_stats, d_opt=d_opt, g_stats=g_stats)
    (g_loss, g_stats), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
        state.g_params, state, jax.random.fold_in(rng, n_dis), batch_size)
    updates, g_opt = optimizer.update(grads, state.g_opt, state.g_params)
    state = state.replace(step=state.step + 1, g_params=optax.apply_updates(state.g_params, updates),
                          g_stats=g_stats, g_opt=g_opt)
    return state, {"d_loss": jnp.mean(d_losses), "g_loss": g_loss}

  return train_step


def train(config, workdir: str, from_scratch: bool = False):
  """Trains the SNGAN of config until config.training.num_steps generator steps (resumable; see
  train.train for what is refused, and for SIGTERM / SIGINT)."""
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(config.training.batch_size, "training.batch_size")
  images = data_lib.load_image_source(config.data)
  stream = data_lib.BatchStream(images, config.training.batch_size, config.seed)
  generator, discriminator = gan.build_gan(config)
  optimizer = builders.build_gan_optimizer(config)
  identity = config_lib.checkpoint_identity(config, "train")
  record = checkpoint_lib.identity_record(config.to_dict(), identity)
  interruption = checkpoint_lib.Interruption()
  try:
    with checkpoint_lib.WorkdirLock(workdir):
      checkpointer = checkpoint_lib.Checkpointer(workdir, config.training.keep_checkpoints)
      try:
        restored = checkpoint_lib.resume(
            checkpointer, {checkpoint_lib.STATE: builders.abstract_gan_state(config, mesh)},
            identity, builders.gan_legacy(config, mesh), from_scratch)
        if restored is None:
          init = compute_lib.for_backend(config).jit(
              functools.partial(builders.init_gan_state, config, generator, discriminator,
                                optimizer),
              out_shardings=parallel.replicated(mesh), run_once=True)
          state = init(jax.random.key(config.seed))
        else:
          state = restored[1][checkpoint_lib.STATE]
        train_lib.write_config_record(config, workdir)
        state = _train_loop(config, workdir, state, stream, checkpointer, record, interruption,
                            generator, discriminator, optimizer, mesh)
      finally:
        checkpoint_lib.close_or_fail(checkpointer)
  finally:
    interruption.restore()
  return train_lib.TrainResult(state, int(state.step), interruption.signal_name,
                               interruption.exit_code)


def _train_loop(config, workdir, state, stream, checkpointer, record, interruption, generator,
                discriminator, optimizer, mesh) -> GANState:
  replicated = parallel.replicated(mesh)
  real_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, parallel.DATA_AXIS))
  train_step = compute_lib.for_backend(config).jit(
      make_train_step(config, generator, discriminator, optimizer),
      in_shardings=(replicated, real_sharding), out_shardings=(replicated, replicated),
      donate_argnums=0)
  n_dis, num_steps = config.gan.n_dis, config.training.num_steps
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer, every_secs=30)
  step = int(state.step)
  try:
    while step < num_steps:
      at_boundary = (step % config.training.log_every == 0
                     or step % config.training.checkpoint_every == 0)
      if interruption.requested(at_boundary):
        checkpoint_lib.save_or_fail(checkpointer, step, {checkpoint_lib.STATE: state}, record,
                                    wait=True)
        logging.warning("saved a checkpoint at step %d after %s", step, interruption.signal_name)
        break
      # Generator step s uses the data batches n_dis * s .. n_dis * s + n_dis - 1.
      real = np.stack([stream.batch(step * n_dis + i) for i in range(n_dis)])
      global_shape = (n_dis, real.shape[1] * jax.process_count()) + real.shape[2:]
      real = jax.make_array_from_process_local_data(real_sharding, real, global_shape)
      state, metrics = train_step(state, real)
      step += 1
      if step % config.training.log_every == 0 or step == num_steps:
        writer.write_scalars(step, jax.device_get(metrics))
        progress(step)
      if step % config.training.checkpoint_every == 0 or step == num_steps:
        checkpoint_lib.save_or_fail(checkpointer, step, {checkpoint_lib.STATE: state}, record)
  finally:
    writer.flush()
  logging.info("SNGAN at step %d", step)
  return state
