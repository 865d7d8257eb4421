"""--mode=sample: samples from the EMA params of the latest checkpoint; .npz (uint8) + PNG grid;
audio (data.kind='audio'): .npz (int16), one .wav per sample and a PNG of waveforms + spectrograms.

`build_generator` is the one place that turns a config and a workdir into a batch sampler (the
configured sampler, depth schedule and surrogate); --mode=evaluate draws its samples from it too.
"""

import dataclasses
import hashlib
import os
import time
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from jdiff import audio
from jdiff import builders
from jdiff import conditioning
from jdiff import compute as compute_lib
from jdiff import errors
from jdiff import files
from jdiff import images as images_lib
from jdiff import parallel
from jdiff import progress
from jdiff import sampling
from jdiff import surrogate as surrogate_lib


PROGRESS_WITHIN_BATCH_FROM = 100  # network evaluations per sample


@dataclasses.dataclass
class Generator:
  """Batches of config.sampling.batch_size samples from one checkpoint.

  sample(index) -> uint8 [B, H, W, C] (audio: int16 [B, L, 1]) on every process; batch `index`
  depends only on (config.seed, checkpoint_step, index), so any subset of batches can be made
  in any order.
  """
  sample_fn: Callable            # jitted (params, rng) -> [B, H, W, C] in [-1, 1], sharded
  params: object
  checkpoint_step: int
  network_evaluations: int       # per sample, of the diffusion model
  batch_size: int
  rng: jax.Array
  surrogate_evaluations: int = 0  # per sample, of the surrogate model (surrogate diffusion)
  image_shape: Tuple[int, ...] = ()
  evaluation_fn: Optional[Callable] = None  # jitted (params, x [B, ...]) -> one network evaluation
  to_output: Callable = sampling.to_uint8  # [-1, 1] floats -> what files hold (audio: to_int16)
  # The samples' conditioning (jdiff/conditioning.py): one row per sample, in order, padded to
  # whole batches ({}: unconditional).
  cond: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def _cond(self, index: int):
    """Batch `index`'s conditioning pytree (None for an unconditional model)."""
    if not self.cond:
      return None
    return {key: value[index * self.batch_size:(index + 1) * self.batch_size]
            for key, value in self.cond.items()}

  def compile(self) -> float:
    """Compiles the sampler now; returns the seconds it took."""
    if not hasattr(self.sample_fn, "lower"):
      return 0.0  # compiled already
    start = time.perf_counter()
    self.sample_fn = self.sample_fn.lower(self.params, self.rng, self._cond(0)).compile()
    return time.perf_counter() - start

  def seconds_per_evaluation(self, repeats: int = 3) -> float:
    """Measured seconds of one full-resolution network evaluation per sample (median of
    `repeats` batches, compile excluded): the unit of a sampler's cost."""
    x = jnp.zeros((self.batch_size,) + self.image_shape)
    jax.block_until_ready(self.evaluation_fn(self.params, x))  # compiles
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(self.evaluation_fn(self.params, x))
      times.append(time.perf_counter() - start)
    return float(np.median(times)) / self.batch_size

  def parameter_hash(self) -> str:
    """sha256 (16 hex digits) of the EMA params' names, shapes, dtypes and bytes: tells one
    checkpoint's model from another trained to the same step."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(self.params)[0]:
      # Params are replicated: this process's first copy holds the whole array.
      array = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
      digest.update(f"{jax.tree_util.keystr(path)} {array.shape} {array.dtype};".encode())
      digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]

  def sample(self, index: int) -> np.ndarray:
    images = self.sample_fn(self.params, jax.random.fold_in(self.rng, index), self._cond(index))
    # Gathers every process's rows (a no-op copy to host with one process).
    return self.to_output(multihost_utils.process_allgather(images, tiled=True))


def conditioning_of(config, num_samples: int, batch_size: int) -> Dict[str, np.ndarray]:
  """The conditioning of num_samples samples, padded to whole sampling batches ({} when
  unconditional)."""
  return conditioning.sampling_cond(config, -(-num_samples // batch_size) * batch_size)


def batch_size_for(config, num_samples: int) -> int:
  """config.sampling.batch_size, or fewer when fewer samples are wanted (rounded up to a multiple
  of the device count): a batch larger than the whole run would only cost memory and time."""
  devices = jax.device_count()
  return min(config.sampling.batch_size, -(-num_samples // devices) * devices)


def build_generator(config, workdir: str, mesh, num_samples: Optional[int] = None) -> Generator:
  """num_samples: how many samples will be drawn (default config.sampling.num_samples); it caps
  the batch size and sets how many mels a vocoder is given."""
  num_samples = num_samples or config.sampling.num_samples
  batch_size = batch_size_for(config, num_samples)
  compute = compute_lib.for_backend(config)
  model = builders.build_model(config, compute)
  diffusion = builders.build_diffusion(config)
  params, step = builders.restore_ema_params(config, workdir, model, mesh)
  surrogate_fn, surrogate_evaluations = None, 0
  if config.surrogate.kind != "none":
    surrogate_fn, surrogate_evaluations = surrogate_lib.load_surrogate(config, mesh)(
        config.surrogate.t_mid)
  sampler, evaluations = builders.build_sampler(config, diffusion, surrogate_fn)
  # A long batch (DDPM's T steps) reports progress inside it; a short one does not, as an
  # executable with host callbacks is not kept in XLA's persistent compilation cache.
  tick = (progress.within_batch("sampling: one batch", evaluations)
          if evaluations >= PROGRESS_WITHIN_BATCH_FROM else None)
  sample_fn = builders.make_sample_fn(
      sampler, model, mesh, builders.image_shape(config), batch_size, tick, compute,
      model_fn_of=lambda params, cond: builders.make_sampling_model_fn(config, model, params,
                                                                       cond))
  last_step = float(config.diffusion.num_timesteps - 1)
  evaluation_fn = compute.jit(lambda params, x: builders.make_model_fn(model, params)(
      x, jnp.full(x.shape[:1], last_step)))
  return Generator(sample_fn, params, step, evaluations, batch_size,
                   jax.random.fold_in(jax.random.key(config.seed), 1 + step),
                   surrogate_evaluations, builders.image_shape(config), evaluation_fn,
                   audio.to_int16 if config.data.kind == "audio" else sampling.to_uint8,
                   conditioning_of(config, num_samples, batch_size))


def sample(config, workdir: str) -> str:
  """Writes <workdir>/samples/ (samples.npz and grid.png; audio: samples.npz, one .wav per
  sample, waveforms.png) as one set that replaces the previous one whole, only once every
  sample is made; returns the grid's path."""
  return sample_with_step(config, workdir)[0]


def sample_with_step(config, workdir: str) -> Tuple[str, int]:
  """sample(), and the checkpoint step it sampled."""
  out_dir = os.path.join(workdir, "samples")
  # Restores first: a mistyped workdir is "no checkpoint", and nothing is created there.
  generator = build_generator(config, workdir, parallel.make_mesh())
  if jax.process_index() == 0:
    files.recover_folder(out_dir)
    files.check_writable(workdir, "samples")  # before minutes of sampling, not after
  logging.info("sampling %d samples from checkpoint step %d", config.sampling.num_samples,
               generator.checkpoint_step)
  num_batches = -(-config.sampling.num_samples // generator.batch_size)
  batches = []
  report = progress.batches("sampling", num_batches)
  try:
    for i in range(num_batches):
      errors.raise_if_stop_requested()
      batches.append(generator.sample(i))
      report(i + 1)
    errors.raise_if_stop_requested()
  except (KeyboardInterrupt, errors.StopRequested) as e:
    raise errors.Interrupted(errors.signal_name(e), f"stopped by {errors.signal_name(e)} after "
                             f"{len(batches)} of {num_batches} batches: nothing written, {out_dir} "
                             "is as it was") from None
  samples = np.concatenate(batches)[:config.sampling.num_samples]
  grid_name = "waveforms.png" if config.data.kind == "audio" else "grid.png"
  if jax.process_index() == 0:
    with files.replace_folder(out_dir) as staging:
      write_samples(config, samples, generator.checkpoint_step, staging, grid_name)
  return os.path.join(out_dir, grid_name), generator.checkpoint_step


def write_samples(config, samples: np.ndarray, checkpoint_step: int, folder: str,
                  grid_name: str) -> None:
  """The files of one sample set, into `folder`."""
  files.save_npz(os.path.join(folder, "samples.npz"), compressed=True, sync=False, images=samples,
                 step=checkpoint_step)
  grid_path = os.path.join(folder, grid_name)
  if config.data.kind == "audio":
    for i, wave in enumerate(samples):
      audio.write_wav(os.path.join(folder, f"sample_{i:04d}.wav"), config.data.sample_rate, wave)
    audio.save_waveforms_png(samples, config.data.sample_rate, grid_path)
    if conditioning.kind_of(config) == "mel":  # the clips whose mels the vocoder was given
      audio.save_waveforms_png(conditioning.conditioning_clips(config, len(samples)),
                               config.data.sample_rate, os.path.join(folder, "given_clips.png"))
  elif conditioning.kind_of(config) == "class":
    # One row per class (conditioning.sample_labels orders the samples class by class).
    num_classes = config.model.num_classes
    per_class = -(-len(samples) // num_classes)
    columns = len(samples) if config.sampling.class_label >= 0 else per_class
    images_lib.save_grid(samples[:256], grid_path, num_columns=min(columns, 256))
  else:
    images_lib.save_grid(samples[:256], grid_path)
