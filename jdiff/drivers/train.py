"""--mode=train: the jitted data-parallel train step and the train loop (checkpoints, signals,
metrics). What it trains is built from the config by jdiff.builders."""

import dataclasses
import functools
import json
import os
import time
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jdiff import builders
from jdiff import checkpoint as checkpoint_lib
from jdiff import config_lib
from jdiff import compute as compute_lib
from jdiff import conditioning
from jdiff import data as data_lib
from jdiff import depth as depth_lib
from jdiff import files
from jdiff import objectives
from jdiff import parallel
from jdiff import progress as progress_lib
from jdiff.builders import TrainState
from jdiff.errors import NonFiniteLossError


def images_per_step(config) -> int:
  """Images a train step takes: the batch, and with loss-aware sampling's "+N" variant
  (training.extra_updates = N) N more batches for its forward-only history updates."""
  extra = config.training.extra_updates if config.training.timestep_sampler == "loss_aware" else 0
  return config.training.batch_size * (1 + extra)


def _depth_rng_of_step(base_key, step):
  """The key train_step draws step's depth from: fold_in(seed key, step), its time key (the
  second of three, as loss_and_grads splits), that key's first half (as
  depth.sample_depth_and_timesteps splits it)."""
  time_rng = jax.random.split(jax.random.fold_in(base_key, step), 3)[1]
  return jax.random.split(time_rng)[0]


class TrainStep:
  """(state, uint8 batch[, step]) -> (state, metrics): one jitted program, or one per depth.

  With an adaptive scheme (depth.training random | bucketed) and depth.dispatch = 'host', the
  depth of step s is chosen on the host (depth.HostDepths: a pure function of (seed, s), the
  very depth the traced draw would pick) and the program compiled for that static depth runs,
  so a step costs what its depth costs (a lax.switch over depths cost ~10x on XLA:CPU
  training). Otherwise one program draws its depth inside (lax.switch) or runs at full depth.
  `step` defaults to state.step, read from the device (a sync): loops pass it.
  """

  def __init__(self, programs: Dict[Optional[int], Callable], depth_at=None):
    self.programs = programs  # {depth: jitted program}, {None: program} when there is one
    self.depth_at = depth_at
    self._compiled = {}

  def program_key(self, state, step=None) -> Optional[int]:
    if self.depth_at is None:
      return None
    return self.depth_at(int(jax.device_get(state.step)) if step is None else int(step))

  def lower(self, state, images, step=None):
    """The lowered program that step would run (jax.jit's .lower), for cost analysis."""
    return self.programs[self.program_key(state, step)].lower(state, images)

  def compile_all(self, state, images) -> float:
    """Compiles every program ahead of time for these arguments (later calls run the compiled
    executables and never compile again); returns the seconds it took."""
    start = time.perf_counter()
    for key, program in self.programs.items():
      if key not in self._compiled:
        self._compiled[key] = program.lower(state, images).compile()
    return time.perf_counter() - start

  def compiled(self, key: Optional[int]) -> Callable:
    """The program for depth `key` (None: the only one), compiled if compile_all ran."""
    return self._compiled.get(key, self.programs[key])

  def __call__(self, state, images, step=None):
    return self.compiled(self.program_key(state, step))(state, images)


def ema_decay_of_step(ema_decay: float, warmup: bool, step):
  """The EMA decay of the update made at `step` (0-based). Plain (Ho et al.'s code): ema_decay.
  warmup: min(ema_decay, (1 + step) / (10 + step)) (TF's ExponentialMovingAverage with
  num_updates), because the EMA starts at the initial params and keeps ema_decay ** steps of them:
  22% after 1,500 steps at 0.999, which shrinks every predicted eps by that much
  (docs/results/archive/samplers_cifar10_cpu_plain_ema/README.md)."""
  if not warmup:
    return ema_decay
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


def apply_gradients(optimizer, ema_decay_at: Callable, state: TrainState, loss, grads,
                    loss_history):
  """(state after the optimizer and EMA updates, {loss, grad_norm, finite}): the part of a train
  step that costs the same at every depth (bench_depth times it alone)."""
  grad_norm = optax.tree.norm(grads)
  # A non-finite loss leaves the state untouched, so non-finite params are never written.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def updated(state):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params,
                                          grad_norm=grad_norm)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params,
                                          step_size=1.0 - ema_decay_at(state.step))
    return TrainState(step=state.step + 1, params=params, ema_params=ema_params,
                      opt_state=opt_state, loss_history=loss_history)
  # lax.cond, not a jnp.where per leaf: the where kept the old state alive beside the new one,
  # so XLA copied every donated buffer before updating it (the Ho net's update: 91 ms instead
  # of 148 ms on 2 CPU cores, measured 2026-12-07).
  new_state = jax.lax.cond(finite, updated, lambda state: state, state)
  return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}


def make_train_step(config, model, diffusion, optimizer, mesh,
                    compute: Optional[compute_lib.Compute] = None) -> TrainStep:
  """The data-parallel train step (batch sharded, state replicated, state donated), compiled by
  `compute` (default: the process's backend's, compute.for_backend(config)).

  The batch has images_per_step(config) images: row b (1 + N) is example b's training image and
  the N rows after it are images for the "+N" history updates, so each device keeps its rows.
  """
  base_key = jax.random.key(config.seed)
  num_timesteps = config.diffusion.num_timesteps
  training = config.training
  ema_decay_at = functools.partial(ema_decay_of_step, training.ema_decay, training.ema_warmup)
  loss_aware = training.timestep_sampler == "loss_aware"
  extra_batches = images_per_step(config) // training.batch_size - 1
  num_draws = training.iwdiff_k if training.loss == "iwdiff" else 1
  weight_scale = objectives.iwdiff_weight_scale(training.iwdiff_weights,
                                                builders.image_shape(config))
  scheme = config.depth.training
  depth_args = (model.num_levels, config.depth.power, num_timesteps)

  def make_draw_loss_fn(x_start, t, depth, cond):
    """(params, noise, dropout_rng) -> per-example losses of one noise draw (cond: the batch's
    conditioning pytree, jdiff/conditioning.py)."""

    def draw_loss_fn(params, noise, dropout_rng):
      model_fn = builders.make_model_fn(model, params, train=True, dropout_rng=dropout_rng,
                                        cond=cond)
      return objectives.example_losses(training.loss, diffusion,
                                       lambda x, t: model_fn(x, t, depth), x_start, t, noise,
                                       config.diffusion.variance_type)
    return draw_loss_fn

  def draws(rng, x_shape):
    """k noise draws and k dropout keys (k = 1 unless IWDiff)."""
    noise_rng, dropout_rng = jax.random.split(rng)
    return (jax.random.normal(noise_rng, (num_draws,) + x_shape),
            jax.random.split(dropout_rng, num_draws))

  def grouped_rows(batch):
    """(x_start, data_cond) of row group `row` (0: the training rows; 1..: the history's)."""
    images, data_cond = conditioning.split_batch(batch)
    group = lambda a: a.reshape((-1, 1 + extra_batches) + a.shape[1:])
    grouped_images, grouped_cond = group(images), jax.tree.map(group, data_cond)
    return lambda row: (data_lib.to_float(grouped_images[:, row]),
                        jax.tree.map(lambda a: a[:, row], grouped_cond))

  def loss_and_grads(params, loss_history, batch, rng, static_depth):
    flip_rng, time_rng, draw_rng = jax.random.split(rng, 3)
    rows = grouped_rows(batch)
    x_start, data_cond = rows(0)
    batch_size = x_start.shape[0]
    # Each random choice of the conditioning has a key of its own, so runs without it keep their
    # draws: crops fold in 2, label dropout 3.
    cond = conditioning.train_cond(config, x_start, data_cond, jax.random.fold_in(rng, 3))
    x_start, cond = conditioning.crop(config, jax.random.fold_in(rng, 2), x_start, cond)
    if config.data.random_flip:
      flip = jax.random.bernoulli(flip_rng, 0.5, (batch_size, 1, 1, 1))
      x_start = jnp.where(flip, x_start[:, :, ::-1, :], x_start)
    if loss_aware:
      # config_lib allows loss-aware sampling only with the full network (depth.training=full).
      depth = jnp.int32(0)
      t, time_weights = objectives.sample_timesteps(loss_history, time_rng, batch_size)
    else:
      if static_depth is None:  # traced: drawn here, lax.switch over depths
        depth, t = depth_lib.sample_depth_and_timesteps(time_rng, scheme, batch_size, *depth_args)
      else:  # the host drew it from the same key (HostDepths); only t is drawn here
        depth = static_depth
        t = depth_lib.draw_timesteps(jax.random.split(time_rng)[1], scheme, depth, batch_size,
                                     *depth_args)
      time_weights = jnp.ones((batch_size,), jnp.float32)
    model_depth = None if scheme == "full" else depth
    loss, grads, example_losses = objectives.objective_value_and_grad(
        make_draw_loss_fn(x_start, t, model_depth, cond), params, *draws(draw_rng, x_start.shape),
        time_weights, accumulate=training.iwdiff_accumulate, weight_scale=weight_scale)
    if loss_aware:
      loss_history = objectives.update_loss_history(loss_history, t, example_losses)

      def forward_only_losses(update, extra_t, extra_rng):
        # Images of their own, not the training batch's (the HSE coursework, section 4.5: "two
        # additional updates ... two batch loss calculations").
        extra_x, extra_data_cond = rows(1 + update)
        extra_cond = conditioning.train_cond(config, extra_x, extra_data_cond,
                                             jax.random.fold_in(extra_rng, 3))
        return objectives.forward_only_losses(
            make_draw_loss_fn(extra_x, extra_t, None, extra_cond), params,
            *draws(extra_rng, extra_x.shape), weight_scale)
      loss_history = objectives.refresh_loss_history(
          loss_history, forward_only_losses, jax.random.fold_in(rng, 1), batch_size,
          training.extra_updates)
    return loss, grads, loss_history, jnp.int32(depth)

  def train_step(state: TrainState, batch, static_depth=None):
    """batch: uint8 images, or {"image": images, "label": ...} (conditioning.split_batch)."""
    rng = jax.random.fold_in(base_key, state.step)
    loss, grads, loss_history, depth = loss_and_grads(state.params, state.loss_history, batch,
                                                      rng, static_depth)
    new_state, metrics = apply_gradients(optimizer, ema_decay_at, state, loss, grads,
                                         loss_history)
    return new_state, dict(metrics, depth=depth)

  replicated = parallel.replicated(mesh)
  jit = (compute or compute_lib.for_backend(config)).jit

  def compile_at(static_depth):
    return jit(functools.partial(train_step, static_depth=static_depth),
                           in_shardings=(replicated, parallel.batch_sharding(mesh)),
                           out_shardings=(replicated, replicated), donate_argnums=0)

  if scheme == "full" or loss_aware or config.depth.dispatch == "switch":
    return TrainStep({None: compile_at(None)})
  return TrainStep({k: compile_at(k) for k in range(model.num_levels)},
                   depth_lib.HostDepths(config.seed, _depth_rng_of_step, scheme, *depth_args))


def _summarise(pending) -> Dict[str, float]:
  fetched = jax.device_get(pending)
  summary = {key: float(np.mean([m[key] for m in fetched])) for key in ("loss", "grad_norm")}
  summary["all_finite"] = all(bool(m["finite"]) for m in fetched)
  return summary


@dataclasses.dataclass
class TrainResult:
  """How a train run ended: the step reached and, when a signal stopped it, the signal's name.
  stepping_seconds: wall-clock of this run's steps, from the first step's dispatch (compilation
  done) to the last one finished, checkpoint saves included; steps_trained: how many."""
  state: TrainState
  step: int
  interrupted_by: Optional[str] = None
  exit_code: int = 0
  stepping_seconds: float = 0.0
  steps_trained: int = 0


def restore_or_init(config, checkpointer, model, optimizer, mesh, from_scratch=False) -> TrainState:
  """The latest good checkpoint's state, or a new one when the workdir has none (or from_scratch)."""
  abstract = builders.abstract_state(config, model, optimizer, mesh)
  restored = checkpoint_lib.resume(checkpointer, builders.checkpoint_items(abstract),
                                   config_lib.checkpoint_identity(config, "train"),
                                   builders.train_state_legacy(abstract), from_scratch)
  if restored is None:
    return builders.build_state(config, model, optimizer, mesh)
  logging.info("resumed from %s at step %d", checkpointer.directory, restored[0])
  return builders.state_from_items(restored[1])


def write_config_record(config, workdir: str) -> None:
  """<workdir>/config.json: the config of the latest train run, for people (checkpoints carry
  their own copy, which is what a resuming run is checked against)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "config.json")
  files.write_json(path, json.loads(json.dumps(config.to_dict(), sort_keys=True, default=str)))


def build_fresh_training(config, mesh, compute: Optional[compute_lib.Compute] = None):
  """(model, a new state at step 0, the jitted train step) of config on mesh: what a benchmark
  or a test of the train step needs (train() restores its state from the workdir instead).
  compute: the backend's Compute to build with (default: the process's, for_backend(config))."""
  compute = compute or compute_lib.for_backend(config)
  model = builders.build_model(config, compute)
  optimizer = builders.build_optimizer(config.training, compute)
  state = builders.build_state(config, model, optimizer, mesh)
  return model, state, make_train_step(config, model, builders.build_diffusion(config), optimizer,
                                       mesh, compute)


def train(config, workdir: str, from_scratch: bool = False) -> TrainResult:
  """Trains until config.training.num_steps, resuming from the latest checkpoint in workdir.

  Refuses (CheckpointMismatchError) a workdir whose checkpoints hold another model, and
  (CheckpointDamagedError) one whose checkpoints are all damaged, unless from_scratch. SIGTERM and
  SIGINT save a checkpoint and stop: the result says which signal and the step reached.
  """
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(config.training.batch_size, "training.batch_size")
  images = data_lib.load_image_source(config.data)  # an array, or a TFDS set read by index
  # Labels (data.label_key) make each batch {"image", "label"}: the train step's conditioning.
  labels = data_lib.load_labels(config.data) if conditioning.kind_of(config) == "class" else None
  stream = data_lib.BatchStream(images, images_per_step(config), config.seed, labels=labels)
  logging.info("data: %s, %d images of shape %s", config.data.source, len(images), images.shape[1:])

  compute = compute_lib.for_backend(config)
  model = builders.build_model(config, compute)
  diffusion = builders.build_diffusion(config)
  optimizer = builders.build_optimizer(config.training, compute)
  record = checkpoint_lib.identity_record(config.to_dict(),
                                          config_lib.checkpoint_identity(config, "train"))
  interruption = checkpoint_lib.Interruption()
  try:
    with checkpoint_lib.WorkdirLock(workdir):
      checkpointer = checkpoint_lib.Checkpointer(workdir, config.training.keep_checkpoints)
      try:
        state = restore_or_init(config, checkpointer, model, optimizer, mesh, from_scratch)
        first_step = int(state.step)
        write_config_record(config, workdir)
        state, stepping_seconds = _train_loop(
            config, workdir, state, stream, checkpointer, record, interruption,
            make_train_step(config, model, diffusion, optimizer, mesh, compute), mesh)
      finally:
        checkpoint_lib.close_or_fail(checkpointer)
  finally:
    interruption.restore()
  return TrainResult(state, int(state.step), interruption.signal_name, interruption.exit_code,
                     stepping_seconds, int(state.step) - first_step)


def _train_loop(config, workdir, state, stream, checkpointer, record, interruption, train_step,
                mesh) -> Tuple[TrainState, float]:
  """(state, stepping seconds: wall-clock of the steps, compilation excluded)."""
  num_steps = config.training.num_steps
  step = int(state.step)
  if step >= num_steps:
    logging.warning("the latest checkpoint is at step %d >= training.num_steps=%d: nothing to "
                    "train (raise --config.training.num_steps to train further)", step, num_steps)
    return state, 0.0
  writer = progress_lib.metric_writer(workdir, just_logging=jax.process_index() > 0)
  progress = progress_lib.report_progress(num_steps, writer, every_secs=30)
  # Every program (one per depth with host dispatch) compiles now, none after the first step.
  logging.info("compiled %d train step program(s) in %.1f s", len(train_step.programs),
               train_step.compile_all(state, parallel.global_batch_from_local(stream.batch(step),
                                                                              mesh)))
  pending = []
  start = time.perf_counter()
  try:
    while step < num_steps:
      at_boundary = (step % config.training.log_every == 0
                     or step % config.training.checkpoint_every == 0)
      if interruption.requested(at_boundary):
        checkpoint_lib.save_or_fail(checkpointer, step, builders.checkpoint_items(state), record, wait=True)
        logging.warning("saved a checkpoint at step %d after %s", step, interruption.signal_name)
        break
      batch = parallel.global_batch_from_local(stream.batch(step), mesh)
      state, metrics = train_step(state, batch, step)
      pending.append(metrics)
      step += 1
      is_last = step == num_steps
      if step % config.training.log_every == 0 or step % config.training.checkpoint_every == 0 or is_last:
        summary = _summarise(pending)  # waits for the steps to finish, so the rate below is real
        pending = []
        if not summary.pop("all_finite"):
          raise NonFiniteLossError(
              f"non-finite loss or gradient before step {step}: stopping. The state kept the last "
              "finite parameters; the last checkpoint is good. Lower training.learning_rate or "
              "check the data.")
        writer.write_scalars(step, summary)
        progress(step)
        if step % config.training.checkpoint_every == 0 or is_last:
          checkpoint_lib.save_or_fail(checkpointer, step, builders.checkpoint_items(state), record)
    jax.block_until_ready(state)  # the steps since the last summary (a signal's early stop)
  finally:
    writer.flush()
  return state, time.perf_counter() - start
