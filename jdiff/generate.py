"""--mode=sample: samples from the EMA params of the latest checkpoint; .npz (uint8) + PNG grid."""

import os
import time

import jax
import numpy as np
from absl import logging

from jdiff import depth as depth_lib
from jdiff import images as images_lib
from jdiff import parallel
from jdiff import sampling
from jdiff import train as train_lib
from jdiff.models import build_model


class NoCheckpointError(RuntimeError):
  pass


def restore_ema_params(config, workdir, model, mesh):
  optimizer = train_lib.make_optimizer(config.training)
  checkpointer = train_lib.checkpoint_lib.Checkpointer(workdir, config.training.keep_checkpoints)
  try:
    state = checkpointer.restore_latest(train_lib.abstract_state(config, model, optimizer, mesh))
  finally:
    checkpointer.close()
  if state is None:
    raise NoCheckpointError(f"no checkpoint in {checkpointer.directory}: train first "
                            "(--mode=train with the same --workdir)")
  return state.ema_params, int(state.step)


def generate(config, workdir: str) -> str:
  """Writes <workdir>/samples/samples.npz and grid.png; returns the grid's path."""
  mesh = parallel.make_mesh()
  model = build_model(config)
  diffusion = train_lib.build_diffusion(config)
  params, step = restore_ema_params(config, workdir, model, mesh)
  sample_fn = sampling.make_sample_fn(
      sampling.build_sampler(config, diffusion),
      # Called as model_fn(x, t, k) when config.depth.power > 0 (adaptive depth), else (x, t).
      lambda p: depth_lib.depth_model_fn(model, p), mesh, train_lib.image_shape(config),
      config.sampling.batch_size)

  num_batches = -(-config.sampling.num_samples // config.sampling.batch_size)
  rng = jax.random.fold_in(jax.random.key(config.seed), 1 + step)
  batches = []
  start = time.time()
  for i in range(num_batches):
    batches.append(sampling.to_uint8(jax.device_get(sample_fn(params, jax.random.fold_in(rng, i)))))
    elapsed = time.time() - start
    logging.info("sampled batch %d/%d, %.1f s elapsed, ETA %.0f s", i + 1, num_batches, elapsed,
                 elapsed / (i + 1) * (num_batches - i - 1))
  samples = np.concatenate(batches)[:config.sampling.num_samples]
  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  np.savez_compressed(os.path.join(out_dir, "samples.npz"), images=samples, step=step)
  return images_lib.save_grid(samples[:256], os.path.join(out_dir, "grid.png"))
