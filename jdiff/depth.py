"""Adaptive depth (Giladi et al., papers/adaptive_unet.txt): k(t) schedule, buckets, dispatch.

k(t) = min(N - 1, floor(N - N (1 - t/T)^c)); c = 0 is the full network at every step.
One compiled function serves every depth: the U-Net is traced once per k and `lax.switch`
picks the branch from one traced scalar per batch (under vmap a switch would run them all).
"""

from typing import Callable, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

TRAINING_SCHEMES = ("full", "random", "bucketed")


def depth_schedule(num_levels: int, power: float, num_timesteps: int) -> np.ndarray:
  """k(t) for every 0-based step t in 0..T-1, with t/T as the paper's t in [0, 1)."""
  if power == 0:
    return np.zeros(num_timesteps, np.int32)
  frac = np.arange(num_timesteps, dtype=np.float64) / num_timesteps
  depth = np.floor(num_levels - num_levels * (1.0 - frac) ** power + 1e-9)
  return np.minimum(num_levels - 1, depth).astype(np.int32)


def depth_buckets(num_levels: int, power: float, num_timesteps: int) -> List[np.ndarray]:
  """For each k in 0..N-1, the steps t with k(t) = k (possibly empty)."""
  schedule = depth_schedule(num_levels, power, num_timesteps)
  return [np.nonzero(schedule == k)[0] for k in range(num_levels)]


def apply_at_depth(apply_fn: Callable, num_levels: int, depth: Optional[jax.Array], *args,
                   **kwargs):
  """apply_fn(*args, shortcut_depth=k, **kwargs) for a traced scalar k, via lax.switch."""
  if depth is None or num_levels == 1:
    return apply_fn(*args, shortcut_depth=0, **kwargs)
  branches = [
      (lambda operands, k=k: apply_fn(*operands, shortcut_depth=k, **kwargs))
      for k in range(num_levels)
  ]
  return jax.lax.switch(jnp.clip(depth, 0, num_levels - 1), branches, args)


def sample_depth_and_timesteps(rng, scheme: str, batch_size: int, num_levels: int,
                               power: float, num_timesteps: int):
  """(depth, t): one depth for the whole batch, t per example, t uniform over many batches.

  random:   k uniform over 0..N-1, t uniform per example.
  bucketed: a bucket drawn in proportion to its number of steps, then t uniform inside it,
            so every example of the batch has k(t) = k.
  full:     k = 0, t uniform.
  """
  depth_rng, t_rng = jax.random.split(rng)
  if scheme == "full":
    return jnp.int32(0), jax.random.randint(t_rng, (batch_size,), 0, num_timesteps)
  if scheme == "random":
    depth = jax.random.randint(depth_rng, (), 0, num_levels)
    return depth, jax.random.randint(t_rng, (batch_size,), 0, num_timesteps)
  if scheme == "bucketed":
    schedule = depth_schedule(num_levels, power, num_timesteps)
    counts = np.bincount(schedule, minlength=num_levels)
    # A uniform step t picks its bucket with probability count/T; t then is uniform in it.
    first_step = jax.random.randint(depth_rng, (), 0, num_timesteps)
    depth = jnp.asarray(schedule)[first_step]
    starts = jnp.asarray(np.concatenate([[0], np.cumsum(counts)[:-1]]), jnp.int32)
    # Steps sorted by depth are contiguous because k(t) is non-decreasing in t.
    offset = jax.random.randint(t_rng, (batch_size,), 0, jnp.asarray(counts)[depth])
    return depth, starts[depth] + offset
  raise ValueError(f"depth training scheme {scheme!r}: allowed {TRAINING_SCHEMES}")
