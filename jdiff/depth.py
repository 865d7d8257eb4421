"""Adaptive depth (Giladi et al., the adaptive-depth U-Net): k(t) schedule, buckets, dispatch.

k(t) = min(N - 1, floor(N - N (1 - t/T)^c)); c = 0 is the full network at every step.
Sampling: one compiled function serves every depth: the U-Net is traced once per k and
`lax.switch` picks the branch from one traced scalar per batch (under vmap a switch would run
them all). Training: that switch cost 16-23x a static-depth step on XLA:CPU (bench_depth), so
the train step is compiled once per depth and the host picks the program (HostDepths: the
depth draw_depth would pick, from (seed, step) alone); draw_timesteps then draws t at it.
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


def draw_depth(rng, scheme: str, num_levels: int, power: float, num_timesteps: int):
  """The depth of one batch (int32 scalar).

  random:   k uniform over 0..N-1.
  bucketed: k = k(t0) for t0 uniform over 0..T-1: a bucket in proportion to its number of steps.
  full:     k = 0.
  """
  if scheme == "full":
    return jnp.int32(0)
  if scheme == "random":
    return jax.random.randint(rng, (), 0, num_levels)
  if scheme == "bucketed":
    schedule = depth_schedule(num_levels, power, num_timesteps)
    # A uniform step t picks its bucket with probability count/T.
    return jnp.asarray(schedule)[jax.random.randint(rng, (), 0, num_timesteps)]
  raise ValueError(f"depth training scheme {scheme!r}: allowed {TRAINING_SCHEMES}")


def draw_timesteps(rng, scheme: str, depth, batch_size: int, num_levels: int, power: float,
                   num_timesteps: int):
  """t per example of a batch at `depth` (a Python int or a traced scalar): uniform over all T
  steps (full, random), or uniform inside depth's bucket (bucketed: every k(t) equals depth)."""
  if scheme != "bucketed":
    return jax.random.randint(rng, (batch_size,), 0, num_timesteps)
  counts = np.bincount(depth_schedule(num_levels, power, num_timesteps), minlength=num_levels)
  # Steps sorted by depth are contiguous because k(t) is non-decreasing in t.
  starts = jnp.asarray(np.concatenate([[0], np.cumsum(counts)[:-1]]), jnp.int32)
  offset = jax.random.randint(rng, (batch_size,), 0, jnp.asarray(counts)[depth])
  return starts[depth] + offset


def sample_depth_and_timesteps(rng, scheme: str, batch_size: int, num_levels: int,
                               power: float, num_timesteps: int):
  """(depth, t): one depth for the whole batch (draw_depth), t per example (draw_timesteps);
  over many batches t is uniform over 0..T-1. The depth comes from the first half of
  split(rng), so a host that knows rng can pick the same depth (HostDepths)."""
  depth_rng, t_rng = jax.random.split(rng)
  depth = draw_depth(depth_rng, scheme, num_levels, power, num_timesteps)
  return depth, draw_timesteps(t_rng, scheme, depth, batch_size, num_levels, power, num_timesteps)


class HostDepths:
  """depth_at(step): the depth the traced draw (draw_depth) picks at a step, computed from
  (seed, step) alone on this process's first local device, whatever the backend, 256 steps per
  call (one small transfer to the host per call).

  depth_rng_of_step(base_key, step) must be the traced train step's own derivation of its
  depth rng, so host and traced picks are the same bits (threefry is exact on every backend).
  Every process of a multi-host run computes the same depth for a step and so runs the same
  per-depth program; a resumed run picks what the uninterrupted one picked.
  """

  def __init__(self, seed: int, depth_rng_of_step: Callable, scheme: str, num_levels: int,
               power: float, num_timesteps: int, chunk: int = 256):
    # Not a named backend: a user's JAX_PLATFORMS (cuda, tpu) may leave no CPU backend at all.
    device = jax.local_devices()[0]
    self._base_key = jax.device_put(jax.random.key(seed), device)
    self._chunk = chunk
    self._cache_start, self._cache = None, None

    def depths(base_key, first_step):
      steps = first_step + jnp.arange(chunk, dtype=jnp.int32)
      return jax.vmap(lambda step: draw_depth(depth_rng_of_step(base_key, step), scheme,
                                              num_levels, power, num_timesteps))(steps)
    self._device = device
    # Compiled now, so that no compile happens once training runs.
    self._depths = jax.jit(depths).lower(self._base_key, self._on_device(0)).compile()

  def _on_device(self, step: int):
    return jax.device_put(np.int32(step), self._device)

  def __call__(self, step: int) -> int:
    start = step - step % self._chunk
    if start != self._cache_start:  # one call per `chunk` steps
      self._cache = np.asarray(jax.device_get(self._depths(self._base_key, self._on_device(start))))
      self._cache_start = start
    return int(self._cache[step - start])
