"""--mode=sample: samples from the EMA params of the latest checkpoint; .npz (uint8) + PNG grid.

`make_generator` is the one place that turns a config and a workdir into a batch sampler (the
configured sampler, depth schedule and surrogate); --mode=evaluate draws its samples from it too.
"""

import dataclasses
import os
import time
from typing import Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from jdiff import checkpoint as checkpoint_lib
from jdiff import config_lib
from jdiff import depth as depth_lib
from jdiff import images as images_lib
from jdiff import parallel
from jdiff import sampling
from jdiff import train as train_lib
from jdiff.errors import CheckpointMissingError
from jdiff.models import build_model


def restore_ema_params(config, workdir, model, mesh):
  """(EMA params, step) of the latest good checkpoint; restores nothing else (no optimizer).

  Reads only: a mistyped workdir gets an error and no new folder.
  """
  checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
  try:
    abstract_params = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)),
        jax.eval_shape(lambda: train_lib.init_params(model, config, jax.random.key(0))))
    # Checkpoints from before named items hold one whole TrainState.
    legacy = checkpoint_lib.Legacy(
        train_lib.abstract_state(config, model, train_lib.make_optimizer(config.training), mesh),
        lambda whole: {checkpoint_lib.EMA_PARAMS: whole.ema_params})
    restored = checkpointer.restore_latest({checkpoint_lib.EMA_PARAMS: abstract_params},
                                           config_lib.checkpoint_identity(config, "sample"), legacy)
  finally:
    checkpointer.close()
  if restored is None:
    raise CheckpointMissingError(f"no checkpoint in {checkpointer.directory}: train first "
                                 "(--mode=train with the same --workdir)")
  step, items = restored
  return items[checkpoint_lib.EMA_PARAMS], step


@dataclasses.dataclass
class Generator:
  """Batches of config.sampling.batch_size samples from one checkpoint.

  sample(index) -> uint8 [B, H, W, C] on every process; batch `index` depends only on
  (config.seed, checkpoint_step, index), so any subset of batches can be made in any order.
  """
  sample_fn: Callable            # jitted (params, rng) -> [B, H, W, C] in [-1, 1], sharded
  params: object
  checkpoint_step: int
  network_evaluations: int       # per sample
  batch_size: int
  rng: jax.Array

  def compile(self) -> float:
    """Compiles the sampler now; returns the seconds it took."""
    start = time.perf_counter()
    self.sample_fn = self.sample_fn.lower(self.params, self.rng).compile()
    return time.perf_counter() - start

  def sample(self, index: int) -> np.ndarray:
    images = self.sample_fn(self.params, jax.random.fold_in(self.rng, index))
    # Gathers every process's rows (a no-op copy to host with one process).
    return sampling.to_uint8(multihost_utils.process_allgather(images, tiled=True))


def make_generator(config, workdir: str, mesh) -> Generator:
  model = build_model(config)
  diffusion = train_lib.build_diffusion(config)
  params, step = restore_ema_params(config, workdir, model, mesh)
  surrogate_fn = None
  if config.surrogate.kind != "none":
    from jdiff import surrogate as surrogate_lib  # pylint: disable=g-import-not-at-top
    surrogate_fn = surrogate_lib.make_surrogate_fn(config, mesh)
  sampler, evaluations = sampling.build_sampler_and_evaluations(config, diffusion, surrogate_fn)
  sample_fn = sampling.make_sample_fn(
      # Called as model_fn(x, t, k) when config.depth.power > 0 (adaptive depth), else (x, t).
      sampler, lambda p: depth_lib.depth_model_fn(model, p), mesh, train_lib.image_shape(config),
      config.sampling.batch_size)
  return Generator(sample_fn, params, step, evaluations, config.sampling.batch_size,
                   jax.random.fold_in(jax.random.key(config.seed), 1 + step))


def generate(config, workdir: str) -> str:
  """Writes <workdir>/samples/samples.npz and grid.png; returns the grid's path."""
  generator = make_generator(config, workdir, parallel.make_mesh())
  num_batches = -(-config.sampling.num_samples // config.sampling.batch_size)
  batches = []
  start = time.time()
  for i in range(num_batches):
    batches.append(generator.sample(i))
    elapsed = time.time() - start
    logging.info("sampled batch %d/%d, %.1f s elapsed, ETA %.0f s", i + 1, num_batches, elapsed,
                 elapsed / (i + 1) * (num_batches - i - 1))
  samples = np.concatenate(batches)[:config.sampling.num_samples]
  out_dir = os.path.join(workdir, "samples")
  grid_path = os.path.join(out_dir, "grid.png")
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    np.savez_compressed(os.path.join(out_dir, "samples.npz"), images=samples,
                        step=generator.checkpoint_step)
    images_lib.save_grid(samples[:256], grid_path)
  return grid_path
