"""Adaptive depth (Giladi et al., papers/adaptive_unet.txt): k(t) schedule, buckets, dispatch.

k(t) = min(N - 1, floor(N - N (1 - t/T)^c)); c = 0 is the full network at every step.
One compiled function serves every depth: the U-Net is traced once per k and `lax.switch`
picks the branch from one traced scalar per batch (under vmap a switch would run them all).
Samplers know their whole depth column in advance, so `scan_by_depth` could instead run one
lax.scan per run of equal depth with k static (no switch). On CPU the two took the same time
(quickstart U-Net, T = 200, batch 64: 4.53 s both at c = 2, 3.40 s both at c = 5), so the
samplers keep the single scan with the switch; bench_depth re-measures both on any device.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import choices

TRAINING_SCHEMES = choices.DEPTH_TRAINING_SCHEMES
# Guards floor() against N (1 - t)^c landing a rounding error below an integer.
_FLOOR_TOLERANCE = 1e-9


def depth_schedule(num_levels: int, power: float, num_timesteps: int) -> np.ndarray:
  """k(t) for every 0-based step t in 0..T-1, with t/T as the paper's t in [0, 1)."""
  if power == 0:
    return np.zeros(num_timesteps, np.int32)
  frac = np.arange(num_timesteps, dtype=np.float64) / num_timesteps
  depth = np.floor(num_levels - num_levels * (1.0 - frac) ** power + _FLOOR_TOLERANCE)
  return np.minimum(num_levels - 1, depth).astype(np.int32)


def apply_at_depth(apply_fn: Callable, num_levels: int, depth, *args, **kwargs):
  """apply_fn(*args, shortcut_depth=k, **kwargs).

  depth None: the full network; a Python int: that depth, traced alone; a traced scalar:
  every depth traced once, lax.switch picks one at run time (it clamps to 0..N-1).
  """
  if depth is None:
    return apply_fn(*args, shortcut_depth=0, **kwargs)
  if isinstance(depth, (int, np.integer)):
    return apply_fn(*args, shortcut_depth=int(depth), **kwargs)
  branches = [
      (lambda operands, k=k: apply_fn(*operands, shortcut_depth=k, **kwargs))
      for k in range(num_levels)
  ]
  return jax.lax.switch(depth, branches, args)


def scan_by_depth(step_fn: Callable, x_init, table: dict):
  """x <- step_fn(x, row) over the table's rows, one lax.scan per run of equal row["depth"].

  table["depth"] must be concrete (numpy); inside each segment row["depth"] is a Python int,
  so the model is traced at that depth only and no switch runs per step.
  """
  depth = np.asarray(table["depth"])
  columns = {name: np.asarray(column) for name, column in table.items() if name != "depth"}
  segment_starts = np.concatenate([[0], np.flatnonzero(np.diff(depth)) + 1, [len(depth)]])
  x = x_init
  for start, stop in zip(segment_starts[:-1], segment_starts[1:]):
    segment_depth = int(depth[start])

    def body(x, row, segment_depth=segment_depth):
      return step_fn(x, {**row, "depth": segment_depth}), None

    x, _ = jax.lax.scan(body, x, {name: jnp.asarray(column[start:stop])
                                  for name, column in columns.items()})
  return x


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
    # Steps sorted by depth are contiguous because k(t) is non-decreasing in t.
    starts = jnp.asarray(np.concatenate([[0], np.cumsum(counts)[:-1]]), jnp.int32)
    offset = jax.random.randint(t_rng, (batch_size,), 0, jnp.asarray(counts)[depth])
    return depth, starts[depth] + offset
  raise ValueError(f"depth training scheme {scheme!r}: allowed {TRAINING_SCHEMES}")
