"""--mode=evaluate, likelihood part: bits per dimension of the test split under the full VLB.

NLL <= L_T + sum_t L_t (prior, KL terms, discretized Gaussian decoder), each L_t estimated with
one x_t ~ q(x_t | x_0) per image, in bits per dimension, from the EMA params of the latest
checkpoint. Costs T network evaluations per image.
"""

import os
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from jdiff import compute as compute_lib
from jdiff import conditioning
from jdiff import data as data_lib
from jdiff import files
from jdiff import builders
from jdiff import objectives
from jdiff import parallel
from jdiff import progress

# Digits has no test split: its loader returns all 1797 images whatever the split.
TEST_SPLIT = "test"


def evaluate_bits_per_dim(config, workdir: str, num_examples: int = 0, batch_size: int = 0,
                          split: str = TEST_SPLIT) -> dict:
  """Bits/dim of `split` (first num_examples images; 0 = all) -> dict, also <workdir>/bpd.json.

  batch_size 0 uses config.sampling.batch_size (a multiple of the device count).
  """
  mesh = parallel.make_mesh()
  batch_size = batch_size or config.sampling.batch_size
  parallel.check_batch_divisible(batch_size, "sampling.batch_size")
  data_config = config.data.copy_and_resolve_references()
  data_config.split = split
  images = data_lib.load_images(data_config)
  # A class-conditional model's bits/dim are those of log p(x | its label).
  labels = (data_lib.load_labels(data_config) if conditioning.kind_of(config) == "class"
            else np.zeros(len(images), np.int32))
  if num_examples:
    images, labels = images[:num_examples], labels[:num_examples]

  compute = compute_lib.for_backend(config)
  model = builders.build_model(config, compute)
  diffusion = builders.build_diffusion(config)
  params, step = builders.restore_ema_params(config, workdir, model, mesh)

  @compute.jit
  def batch_bpd(params, batch, rng):
    images_uint8, data_cond = conditioning.split_batch(batch)
    x_start = data_lib.to_float(images_uint8)
    # The true labels, never dropped (no training's p_uncond here); unconditional: none.
    cond = {"label": data_cond["label"]} if conditioning.kind_of(config) == "class" else {}
    return objectives.bits_per_dim(
        diffusion, builders.make_model_fn(model, params, cond=cond), x_start, rng,
        variance_type=config.diffusion.variance_type, clip_denoised=builders.clip_x0(config, "ancestral"))

  rng = jax.random.fold_in(jax.random.key(config.seed), step)
  totals, priors, terms = [], [], []
  num_batches = -(-len(images) // batch_size)
  start = time.time()
  report = progress.batches("bits/dim batches", num_batches)
  for i in range(num_batches):
    rows = slice(i * batch_size, (i + 1) * batch_size)
    valid = len(images[rows])
    # The last batch is padded to a full one (one compiled shape); the padding is dropped.
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], batch_size - valid, axis=0)])
    batch = {"image": pad(images[rows]), "label": pad(labels[rows])}
    # Every process passes the whole batch and keeps its own rows of the sharded array.
    local = {key: np.array_split(value, jax.process_count())[jax.process_index()]
             for key, value in batch.items()}
    result = multihost_utils.process_allgather(
        batch_bpd(params, parallel.global_batch_from_local(local, mesh), jax.random.fold_in(rng, i)),
        tiled=True)
    totals.append(result["total"][:valid])
    priors.append(result["prior"][:valid])
    terms.append(result["terms"][:valid])
    report(i + 1)
  total, prior, terms = np.concatenate(totals), np.concatenate(priors), np.concatenate(terms)
  summary = {
      "bits_per_dim": float(total.mean()),
      "bits_per_dim_stderr": float(total.std(ddof=1) / np.sqrt(len(total))) if len(total) > 1 else 0.0,
      "prior_bpd": float(prior.mean()),
      "decoder_bpd": float(terms[:, 0].mean()),
      "kl_terms_bpd": float(terms[:, 1:].sum(axis=1).mean()),
      "num_examples": int(len(total)),
      "split": split,
      "checkpoint_step": step,
      "num_timesteps": int(diffusion.num_timesteps),
      "variance_type": config.diffusion.variance_type,
      "seconds": time.time() - start,
  }
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "bpd.json"), summary)
  return summary
