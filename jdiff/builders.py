"""Config -> objects: the one place that reads a config to build what the drivers run.

build_* make objects from a config (model, diffusion, optimizer, plan, sampler, states);
make_* make functions (the model function, the sharded sample function). Everything below this
module (schedules, diffusion, objectives, sampling, depth, models, checkpoint, data) takes
plain arguments and never sees a config.
"""

import functools
from typing import Any, Callable, Dict, Optional

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jdiff import checkpoint as checkpoint_lib
from jdiff import conditioning
from jdiff import config_lib
from jdiff import compute as compute_lib
from jdiff import depth as depth_lib
from jdiff import diffusion as diffusion_lib
from jdiff import objectives
from jdiff import parallel
from jdiff import sampling
from jdiff import samplers
from jdiff import schedules
from jdiff.errors import CheckpointMissingError
from jdiff.models import diffwave
from jdiff.models import gan
from jdiff.models import presets
from jdiff.models.unet import UNet

# ------------------------------------------------------------------------------------------------
# Model, diffusion, optimizer


def model_config(config) -> ml_collections.ConfigDict:
  """config.model with its preset's fields applied (a copy; the config itself is not changed)."""
  return config_lib.resolved_model_config(config)


def output_channels(config) -> int:
  """Learned variances (improved DDPM) need a second set of C channels."""
  factor = 2 if config.diffusion.variance_type == "learned_range" else 1
  return config.data.num_channels * factor


def gradient_in_loop(config) -> bool:
  """Whether the train step differentiates the model inside lax.switch or lax.scan (a traced
  depth under depth.dispatch=switch; IWDiff's accumulating scan): a fact a backend's choice of
  convolution may depend on (jdiff/compute.py)."""
  return ((config.depth.dispatch == "switch" and config.depth.training != "full")
          or (config.training.loss == "iwdiff" and config.training.iwdiff_accumulate))


def build_model(config, compute: Optional[compute_lib.Compute] = None):
  """The diffusion model: the U-Net, or DiffWave for audio (model.kind='diffwave'), with the
  convolution of `compute` (default: the process's backend, compute.for_backend(config))."""
  compute = compute or compute_lib.for_backend(config)
  model = model_config(config)
  convolution = compute.convolution(gradient_in_loop=gradient_in_loop(config),
                                    one_dimensional=model.kind == "diffwave")
  if model.kind == "diffwave":
    d = config.diffwave
    return diffwave.DiffWave(
        residual_channels=d.residual_channels, skip_channels=d.skip_channels,
        num_layers=d.num_layers, dilation_cycle=d.dilation_cycle, embed_dims=tuple(d.embed_dims),
        out_ch=output_channels(config), n_mels=d.n_mels, mel_hop=d.mel_hop,
        weight_norm=d.weight_norm, dtype=jnp.dtype(model.dtype),
        convolution=convolution,
        # Imported reference checkpoints only (jdiff.tools.pretrained.diffwave_pt); absent from
        # default_config, so the identity of existing checkpoints is unchanged.
        step_in_residual=d.get("step_in_residual", False),
        mel_upsampler=d.get("mel_upsampler", "shared"))
  return UNet(
      ch=model.ch, ch_mult=tuple(model.ch_mult), num_res_blocks=model.num_res_blocks,
      attn_resolutions=tuple(model.attn_resolutions), dropout=model.dropout,
      out_ch=output_channels(config), num_groups=model.num_groups, skip_type=model.skip_type,
      block_type=model.block_type, remat=model.remat, dtype=jnp.dtype(model.dtype),
      convolution=convolution, num_classes=model.get("num_classes", 0))


def num_levels(config) -> int:
  """N, the U-Net's resolution levels (what shortcut depths count)."""
  return len(model_config(config).ch_mult)


def image_shape(config):
  """One example's shape: [H, W, C] images, or [L, 1] waveforms (data.kind='audio')."""
  if config.data.kind == "audio":
    return (config.data.audio_length, 1)
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


def build_diffusion(config) -> diffusion_lib.GaussianDiffusion:
  d = config.diffusion
  return diffusion_lib.GaussianDiffusion.from_betas(
      schedules.get_betas(d.beta_schedule, d.num_timesteps, d.beta_start, d.beta_end))


def build_optimizer(training_config, compute: Optional[compute_lib.Compute] = None
                    ) -> optax.GradientTransformationExtraArgs:
  """Adam with linear warmup (lr (step + 1) / warmup for the first warmup steps) and
  global-norm clipping (Ho et al.) by `compute` (default: the process's backend's);
  update(..., grad_norm=norm) lets a clipping that takes it skip recomputing the norm."""
  compute = compute or compute_lib.for_backend()
  warmup = max(training_config.warmup_steps, 1)
  lr = training_config.learning_rate
  learning_rate = optax.linear_schedule(lr / warmup, lr, warmup - 1) if warmup > 1 else lr
  return optax.chain(compute.clip_by_global_norm(training_config.grad_clip),
                     optax.adam(learning_rate))


def parameter_count(config) -> int:
  """Parameters of the config's U-Net (shapes only, no compute)."""
  shapes = jax.eval_shape(lambda: init_params(build_model(config), config, jax.random.key(0)))
  return sum(x.size for x in jax.tree.leaves(shapes))


def preset_parameter_counts(config) -> Dict[str, int]:
  """{Table 4.3 preset: parameter count} for config's data and diffusion."""
  counts = {}
  for name in presets.PRESETS:
    preset_config = config.copy_and_resolve_references()
    preset_config.model.preset = name
    counts[name] = parameter_count(preset_config)
  return counts


# ------------------------------------------------------------------------------------------------
# Train state


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  # objectives.LossHistory of the loss-aware timestep sampler; None with uniform sampling.
  loss_history: Any = None


def init_params(model, config, rng):
  """The model's initial params (every depth's), traced: call it inside a jitted function, or
  new_params."""
  dummy_x = jnp.zeros((1,) + image_shape(config), jnp.float32)
  dummy_t = jnp.zeros((1,), jnp.float32)
  return model.init(rng, dummy_x, dummy_t, method=type(model).init_all_depths)["params"]


def new_params(model, config, seed: int):
  """init_params(model, config, key(seed)) as one program that runs once (compiled as such by
  the backend's Compute; op by op it takes longer still)."""
  return compute_lib.for_backend(config).jit(
      lambda: init_params(model, config, jax.random.key(seed)), run_once=True)()


def init_loss_history(config):
  if config.training.timestep_sampler == "loss_aware":
    return objectives.init_loss_history(config.diffusion.num_timesteps)
  return None


def build_state(config, model, optimizer, mesh) -> TrainState:
  """A new train state (step 0), replicated on the mesh."""
  @functools.partial(compute_lib.for_backend(config).jit, out_shardings=parallel.replicated(mesh),
                     run_once=True)
  def init():
    params = init_params(model, config, jax.random.key(config.seed))
    return TrainState(step=jnp.int32(0), params=params, ema_params=params,
                      opt_state=optimizer.init(params), loss_history=init_loss_history(config))
  return init()


def _with_sharding(shapes, mesh):
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def abstract_params(config, model, mesh):
  """Shapes, dtypes and shardings of the params (what sampling restores)."""
  return _with_sharding(jax.eval_shape(lambda: init_params(model, config, jax.random.key(0))), mesh)


def abstract_state(config, model, optimizer, mesh) -> TrainState:
  """Shapes, dtypes and shardings of the train state, for restoring without initialising."""
  def state():
    params = init_params(model, config, jax.random.key(0))  # traced once: it is the slow part
    return TrainState(step=jnp.int32(0), params=params, ema_params=params,
                      opt_state=optimizer.init(params), loss_history=init_loss_history(config))
  return _with_sharding(jax.eval_shape(state), mesh)


def checkpoint_items(state: TrainState) -> Dict[str, Any]:
  """The named checkpoint items: the EMA params apart, so sampling restores only them."""
  return {checkpoint_lib.STATE: state.replace(ema_params=None),
          checkpoint_lib.EMA_PARAMS: state.ema_params}


def state_from_items(items) -> TrainState:
  return items[checkpoint_lib.STATE].replace(ema_params=items[checkpoint_lib.EMA_PARAMS])


def train_state_legacy(abstract: TrainState) -> checkpoint_lib.Legacy:
  """Checkpoints from before named items hold one whole TrainState."""
  return checkpoint_lib.Legacy(abstract, checkpoint_items)


def restore_ema_params(config, workdir: str, model, mesh):
  """(EMA params, step) of the latest good checkpoint; restores nothing else (no optimizer).

  Reads only: a mistyped workdir gets an error and no new folder.
  """
  checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
  try:
    # Old single-item checkpoints hold the whole TrainState: only they need the optimizer's shapes.
    legacy = checkpoint_lib.Legacy(
        abstract_state(config, model, build_optimizer(config.training), mesh),
        lambda whole: {checkpoint_lib.EMA_PARAMS: whole.ema_params})
    restored = checkpointer.restore_latest(
        {checkpoint_lib.EMA_PARAMS: abstract_params(config, model, mesh)},
        config_lib.checkpoint_identity(config, "sample"), legacy)
  finally:
    checkpointer.close()
  if restored is None:
    raise CheckpointMissingError(f"no checkpoint in {checkpointer.directory}: train first "
                                 "(--mode=train with the same --workdir)")
  step, items = restored
  return items[checkpoint_lib.EMA_PARAMS], step


# ------------------------------------------------------------------------------------------------
# The model function


def make_model_fn(model, params, *, train: bool = False, dropout_rng=None,
                  cond: Optional[Dict[str, Any]] = None) -> Callable:
  """model_fn(x_t, t, depth=None) -> model output; depth None is the full network, an int that
  shortcut depth, a traced scalar any depth (lax.switch, depth.apply_at_depth). cond: the
  conditioning pytree (jdiff/conditioning.py; {} or None: unconditional), rows as x_t's."""
  rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
  cond = cond or {}

  def model_fn(x, t, depth=None):
    return depth_lib.apply_at_depth(
        lambda x, t, shortcut_depth: model.apply(
            {"params": params}, x, t, shortcut_depth=shortcut_depth, train=train, rngs=rngs,
            **cond),
        model.num_levels, depth, x, t)
  return model_fn


def make_sampling_model_fn(config, model, params, cond: Optional[Dict[str, Any]] = None
                           ) -> Callable:
  """The model_fn(x_t, t, depth=None) samplers run: the model told `cond`, with classifier-free
  guidance (conditioning.guided) where sampling.guidance != 0."""
  guidance = config.sampling.get("guidance", 0.0)
  if not cond or not guidance:
    return make_model_fn(model, params, cond=cond)
  null_cond = conditioning.kind(config).null(config, cond)
  return conditioning.guided(
      lambda x, t, depth, both_cond: make_model_fn(model, params, cond=both_cond)(x, t, depth),
      cond, null_cond, guidance, config.diffusion.variance_type)


# ------------------------------------------------------------------------------------------------
# Samplers


def depth_schedule(config) -> Optional[np.ndarray]:
  """k(t) for t = 0..T-1 when the config asks for adaptive depth (depth.power > 0), else None."""
  if config.depth.power == 0:
    return None
  return depth_lib.depth_schedule(num_levels(config), config.depth.power,
                                  config.diffusion.num_timesteps)


def clip_x0(config, name: Optional[str] = None, clip_x0_setting: Optional[str] = None) -> bool:
  """Whether sampler `name` clips its x0 prediction: sampling.clip_x0, where 'auto' means what
  the sampler's reference code does (its registry record's clip_x0, jdiff/samplers.py)."""
  setting = clip_x0_setting or config.sampling.clip_x0
  if setting == "auto":
    return samplers.get(name or config.sampling.name).clip_x0
  return setting == "on"


def build_plan(config, diffusion: diffusion_lib.GaussianDiffusion, name: Optional[str] = None,
               steps: Optional[int] = None, **overrides) -> sampling.Plan:
  """The plan of config.sampling (name / steps / other sampling fields overridable) from the
  sampler registry (jdiff/samplers.py); 'auto' fields take the sampler's reference default."""
  s = config.sampling
  sampler = samplers.get(name or s.name)
  fields = ml_collections.ConfigDict(s.to_dict())
  fields.update({field: value for field, value in overrides.items() if field in fields})
  fields.name = sampler.name
  d = config.diffusion
  context = samplers.PlanContext(
      betas=schedules.get_betas(d.beta_schedule, d.num_timesteps, d.beta_start, d.beta_end),
      diffusion=diffusion, steps=steps or s.steps,
      schedule=sampler.resolve_schedule(fields.schedule),
      common=dict(variance_type=d.variance_type,
                  clip_denoised=clip_x0(config, sampler.name, overrides.get("clip_x0")),
                  depth_schedule=depth_schedule(config)),
      sampling=sampling, schedules=schedules)
  fields.steps = context.steps
  return sampler.plan(fields, context)


def build_sampler(config, diffusion: diffusion_lib.GaussianDiffusion,
                  surrogate_fn: Optional[Callable] = None):
  """(sampler(model_fn, x_T, rng) for config.sampling, its network evaluations per sample).

  With surrogate_fn (from surrogate.load_surrogate) it starts from the surrogate at
  config.surrogate.t_mid (Algorithm 4).
  """
  plan = build_plan(config, diffusion)
  if surrogate_fn is not None:
    return sampling.with_surrogate(plan, surrogate_fn, config.surrogate.t_mid,
                                   diffusion.num_timesteps)

  def sampler(model_fn, x_T, rng):
    return sampling.run_plan(plan, model_fn, x_T, rng)
  return sampler, plan.num_evaluations


def make_sample_fn(sampler: Callable, model, mesh, image_shape_, batch_size: int,
                   tick: Optional[Callable[[], None]] = None,
                   compute: Optional[compute_lib.Compute] = None,
                   model_fn_of: Optional[Callable] = None):
  """Jitted (params, rng, cond=None) -> images [batch_size, *image_shape], the batch sharded on
  the mesh (cond: the conditioning pytree of the batch's samples, jdiff/conditioning.py).

  sampler(model_fn, x_T, rng) runs the reverse process on model_fn_of(params, cond) (default:
  make_model_fn(model, params, cond=cond); --mode=sample: make_sampling_model_fn, guided).
  tick (e.g. progress.within_batch): a host callback at every network evaluation, for progress
  inside one long batch; the samples are the same with or without it (tests/test_progress.py),
  but XLA's persistent cache keeps no executable with host callbacks. compute: whose jit
  (default: the process's backend's).
  """
  parallel.check_batch_divisible(batch_size, "sampling.batch_size")
  sharding = parallel.batch_sharding(mesh)

  @functools.partial((compute or compute_lib.for_backend()).jit, out_shardings=sharding)
  def sample_fn(params, rng, cond=None):
    noise_rng, sampler_rng = jax.random.split(rng)
    x_T = jax.random.normal(noise_rng, (batch_size,) + tuple(image_shape_))
    x_T = jax.lax.with_sharding_constraint(x_T, sharding)
    model_fn = (model_fn_of(params, cond) if model_fn_of is not None
                else make_model_fn(model, params, cond=cond))
    if tick is not None:
      network = model_fn

      def model_fn(*args, **kwargs):  # pylint: disable=function-redefined
        jax.debug.callback(tick)
        return network(*args, **kwargs)
    return sampler(model_fn, x_T, sampler_rng)

  return sample_fn


# ------------------------------------------------------------------------------------------------
# SNGAN (the surrogate of surrogate diffusion)


@flax.struct.dataclass
class GANState:
  step: jax.Array
  g_params: Any
  g_stats: Any
  d_params: Any
  d_stats: Any
  g_opt: Any
  d_opt: Any


def build_gan_optimizer(config) -> optax.GradientTransformation:
  return optax.adam(config.gan.learning_rate, b1=config.gan.beta1, b2=config.gan.beta2)


def init_gan_state(config, generator, discriminator, optimizer, rng) -> GANState:
  g_rng, d_rng = jax.random.split(rng)
  g_vars = generator.init(g_rng, jnp.zeros((1, config.gan.z_dim)))
  d_vars = discriminator.init(d_rng, jnp.zeros((1,) + image_shape(config)))
  return GANState(step=jnp.int32(0), g_params=g_vars["params"], g_stats=g_vars["batch_stats"],
                  d_params=d_vars["params"], d_stats=d_vars["batch_stats"],
                  g_opt=optimizer.init(g_vars["params"]), d_opt=optimizer.init(d_vars["params"]))


def abstract_gan_state(config, mesh) -> GANState:
  generator, discriminator = gan.build_gan(config)
  return _with_sharding(jax.eval_shape(lambda: init_gan_state(
      config, generator, discriminator, build_gan_optimizer(config), jax.random.key(0))), mesh)


def gan_legacy(config, mesh) -> checkpoint_lib.Legacy:
  """SNGAN checkpoints from before named items hold the GANState as their one item."""
  return checkpoint_lib.Legacy(abstract_gan_state(config, mesh),
                               lambda whole: {checkpoint_lib.STATE: whole})


def restore_gan_state(config, workdir: str, mesh) -> GANState:
  """The latest good SNGAN checkpoint (read only); CheckpointMissingError when there is none."""
  checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
  try:
    restored = checkpointer.restore_latest(
        {checkpoint_lib.STATE: abstract_gan_state(config, mesh)},
        config_lib.checkpoint_identity(config, "sample"), gan_legacy(config, mesh))
  finally:
    checkpointer.close()
  if restored is None:
    raise CheckpointMissingError(f"no SNGAN checkpoint in {checkpointer.directory}: train it "
                                 "first (--mode=train with its config and --workdir)")
  return restored[1][checkpoint_lib.STATE]


def make_gan_generate_fn(config, state: GANState) -> Callable:
  """(key, batch_size) -> images [B, H, W, C] in [-1, 1] (running BatchNorm statistics)."""
  generator, _ = gan.build_gan(config)
  variables = {"params": state.g_params, "batch_stats": state.g_stats}

  def generate(key, batch_size: int):
    return generator.apply(variables, jax.random.normal(key, (batch_size, config.gan.z_dim)))
  return generate
