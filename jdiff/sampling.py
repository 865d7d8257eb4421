"""Samplers: one jitted lax.scan over a precomputed step table. Needs only jax and numpy.

A model function maps (x_t, t) -> model output (eps, or eps and the variance's v for learned
variances), t a float [B] vector of 0-based steps; with a depth schedule it is called as
model_fn(x_t, t, depth=k) with k a traced int32 scalar. The samplers are pure and jittable, and
know nothing of configs or meshes (jdiff.builders builds them from a config and shards them).
On your own model, with a linear schedule of T = 1000 steps:

  plan = sampling.ddim_plan(schedules.linear_betas(1000),
                            schedules.step_schedule(1000, 50, "uniform"), eta=0.0)
  x0 = jax.jit(lambda x, rng: sampling.run_plan(plan, eps_model, x, rng))(x_T, rng)

Every reverse process is a `Plan`: a table of rows from the noisiest step down and the update
of one row. Rows carry "t" (the network's step, integer or real), "index" (folded into the rng
for that row's noise) and "sqrt_a" / "sqrt_1ma" (sqrt(abar), sqrt(1 - abar) of the row's
input), so any plan can also start part-way down from a surrogate sample (Algorithm 4).

  ancestral  Ho et al.'s Algorithm 2 over all T steps.
  respaced   Algorithm 2 on a subsequence s_i with betas 1 - abar_{s_i} / abar_{s_{i-1}}
             (improved DDPM); learned variances interpolate between the respaced beta and
             beta-tilde, so they rescale with it.
  ddim       x' = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma z,
             sigma = eta sqrt((1 - a') / (1 - a) (1 - a / a')).
  fastdpm    the same update at FastDPM's continuous steps / noise levels (VAR or STEP) with
             kappa in place of eta (kappa = 1 DDPM-rev, 0 DDIM-rev).
Defaults are those of each sampler's reference code (REFERENCE_CLIP_X0, REFERENCE_SCHEDULE):
ancestral and respaced clip the x0 prediction to [-1, 1] (Ho et al.'s p_sample, improved-diffusion's
sampling scripts); DDIM (ermongroup/ddim generalized_steps) and FastDPM (FastDPM_pytorch
STEP_sampling / VAR_sampling) do not. DDIM picks steps range(0, T, T // S) by default, FastDPM's
CIFAR-10 commands use its quadratic schedule; FastDPM's kappa defaults to 1 (DDPM-rev).
Adaptive depth: depth_schedule[t] = k(t) for integer steps 0..T-1; a real step t uses
k(floor(t)), the deeper (never cheaper) of its two neighbours' networks.
"""

import dataclasses
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import choices
from jdiff import diffusion as diffusion_lib
from jdiff import schedules

SAMPLERS = choices.SAMPLERS
FASTDPM_KINDS = choices.FASTDPM_KINDS

# What each sampler's reference code does when nothing is said (config: clip_x0 / schedule "auto").
REFERENCE_CLIP_X0 = {"ancestral": True, "respaced": True, "ddim": False, "fastdpm": False}
REFERENCE_SCHEDULE = {"ddim": "uniform", "fastdpm": "quadratic"}
REFERENCE_KAPPA = 1.0  # FastDPM generate.py's -kappa default (DDPM-rev)


def call_model(model_fn: Callable, x, t, depth=None):
  """model_fn(x, t[B]) at the full network, model_fn(x, t[B], depth=k) with a depth schedule."""
  t_vec = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
  if depth is None:
    return model_fn(x, t_vec)
  return model_fn(x, t_vec, depth=depth)


def run_step_table(step_fn: Callable, x_init, table: dict):
  """x <- step_fn(x, row) for each row of the table (dict of equal-length arrays), in one scan."""
  def body(x, row):
    return step_fn(x, row), None
  x, _ = jax.lax.scan(body, x_init, {k: jnp.asarray(v) for k, v in table.items()})
  return x


@dataclasses.dataclass(frozen=True)
class Plan:
  """A reverse process as data: table rows (noisiest first), step(model_fn, x, row, rng) -> x,
  and predict_x0(model_fn, x, row) -> the row's x0 estimate (clipped as the step clips it)."""
  table: Dict[str, np.ndarray]
  step: Callable
  predict_x0: Callable

  @property
  def num_evaluations(self) -> int:
    """Network evaluations per sample (one per row)."""
    return len(self.table["t"])

  def rows_up_to(self, t_max: float) -> "Plan":
    """The rows whose network step is <= t_max (a suffix, since steps decrease)."""
    keep = np.asarray(self.table["t"], np.float64) <= t_max + 1e-6
    return dataclasses.replace(self, table={k: v[keep] for k, v in self.table.items()})

  def rows_down_to(self, t_min: float) -> "Plan":
    """The rows whose network step is >= t_min (a prefix)."""
    keep = np.asarray(self.table["t"], np.float64) >= t_min - 1e-6
    return dataclasses.replace(self, table={k: v[keep] for k, v in self.table.items()})


def run_plan(plan: Plan, model_fn: Callable, x_init, rng):
  return run_step_table(lambda x, row: plan.step(model_fn, x, row, rng), x_init, plan.table)


def run_plan_to_x0(plan: Plan, model_fn: Callable, x_init, rng):
  """All rows but the last as run_plan does, then the last row's x0 estimate at the x it gets.

  A low-resolution DDPM surrogate stops this way at t_mid: its chain from T down to x_{t_mid},
  then x~0 = (x_{t_mid} - sqrt(1 - abar) eps(x_{t_mid})) / sqrt(abar).
  """
  head = {k: v[:-1] for k, v in plan.table.items()}
  last = {k: jnp.asarray(v[-1]) for k, v in plan.table.items()}
  x = run_step_table(lambda x, row: plan.step(model_fn, x, row, rng), x_init, head)
  return plan.predict_x0(model_fn, x, last)


def _with_depth(table: dict, depth_schedule: Optional[np.ndarray]) -> dict:
  if depth_schedule is not None:
    depth_schedule = np.asarray(depth_schedule, np.int32)
    steps = np.clip(np.floor(np.asarray(table["t"], np.float64)), 0, len(depth_schedule) - 1)
    table["depth"] = depth_schedule[steps.astype(np.int64)]
  return table


def _ancestral_plan(diffusion: diffusion_lib.GaussianDiffusion, model_steps: np.ndarray,
                    variance_type: str, clip_denoised: bool, depth_schedule) -> Plan:
  """Algorithm 2 over every index of `diffusion`; index i calls the network at model_steps[i]."""
  index = np.arange(diffusion.num_timesteps - 1, -1, -1, dtype=np.int32)
  table = _with_depth({
      "t": np.asarray(model_steps)[index], "index": index,
      "sqrt_a": diffusion.sqrt_alphas_cumprod[index],
      "sqrt_1ma": diffusion.sqrt_one_minus_alphas_cumprod[index],
  }, depth_schedule)

  def mean_variance(model_fn, x, row):
    i = jnp.full(x.shape[:1], row["index"])
    output = call_model(model_fn, x, row["t"], row.get("depth"))
    return diffusion_lib.p_mean_variance(diffusion, output, x, i, variance_type=variance_type,
                                         clip_denoised=clip_denoised)

  def step(model_fn, x, row, rng):
    mean, log_variance, _, _ = mean_variance(model_fn, x, row)
    noise = jax.random.normal(jax.random.fold_in(rng, row["index"]), x.shape, x.dtype)
    return mean + jnp.where(row["index"] > 0, jnp.exp(0.5 * log_variance), 0.0) * noise

  return Plan(table, step, lambda model_fn, x, row: mean_variance(model_fn, x, row)[2])


def ancestral_plan(diffusion: diffusion_lib.GaussianDiffusion, *, variance_type="fixedlarge",
                   clip_denoised=True, depth_schedule=None) -> Plan:
  steps = np.arange(diffusion.num_timesteps, dtype=np.int32)
  return _ancestral_plan(diffusion, steps, variance_type, clip_denoised, depth_schedule)


def respaced_plan(betas: np.ndarray, steps: np.ndarray, *, variance_type="fixedlarge",
                  clip_denoised=True, depth_schedule=None) -> Plan:
  """Algorithm 2 on the increasing subsequence `steps` of the schedule `betas` (float64)."""
  steps = np.asarray(steps, np.int32)
  alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, np.float64))
  respaced = diffusion_lib.GaussianDiffusion.from_betas(
      schedules.respaced_betas(alphas_cumprod, steps))
  return _ancestral_plan(respaced, steps, variance_type, clip_denoised, depth_schedule)


def generalized_plan(steps: np.ndarray, log_levels: np.ndarray, *, kappa: float,
                     variance_type="fixedlarge", clip_denoised=False, depth_schedule=None) -> Plan:
  """DDIM / FastDPM reverse process over increasing (possibly real) steps with log abar levels.

  From level a to the next lower step's a' (a' = 1 after the last row):
  sigma = kappa sqrt((1 - a') / (1 - a) (1 - a / a')), x' = sqrt(a') x0 + sqrt(1 - a' - sigma^2)
  eps + sigma z with x0 = (x - sqrt(1 - a) eps) / sqrt(a); unclipped this is FastDPM's
  x' = sqrt(a'/a) x + (sqrt(1 - a' - sigma^2) - sqrt(1 - a) sqrt(a'/a)) eps + sigma z.
  Coefficients are formed in float64 (1 - a ~ 1e-4 near t = 0 loses digits in float32).
  clip_denoised clips x0 to [-1, 1] and recomputes eps from it (off in both reference codes).
  Learned variances are not used: only the eps half of the output is read.
  """
  log_a = np.asarray(log_levels, np.float64)[::-1]
  log_a_next = np.append(log_a[1:], 0.0)
  one_minus_a, one_minus_a_next = -np.expm1(log_a), -np.expm1(log_a_next)
  sigma2 = kappa ** 2 * one_minus_a_next / one_minus_a * -np.expm1(log_a - log_a_next)
  f32 = lambda v: np.asarray(v, np.float32)
  table = _with_depth({
      "t": f32(np.asarray(steps, np.float64)[::-1]),
      "index": np.arange(len(log_a) - 1, -1, -1, dtype=np.int32),
      "sqrt_a": f32(np.exp(0.5 * log_a)), "sqrt_1ma": f32(np.sqrt(one_minus_a)),
      "sqrt_a_next": f32(np.exp(0.5 * log_a_next)),
      "dir": f32(np.sqrt(np.maximum(one_minus_a_next - sigma2, 0.0))), "sigma": f32(np.sqrt(sigma2)),
  }, depth_schedule)

  def x0_and_eps(model_fn, x, row):
    output = call_model(model_fn, x, row["t"], row.get("depth"))
    eps, _ = diffusion_lib.split_model_output(output, variance_type)
    x0 = (x - row["sqrt_1ma"] * eps) / row["sqrt_a"]
    if clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - row["sqrt_a"] * x0) / row["sqrt_1ma"]
    return x0, eps

  def step(model_fn, x, row, rng):
    x0, eps = x0_and_eps(model_fn, x, row)
    noise = jax.random.normal(jax.random.fold_in(rng, row["index"]), x.shape, x.dtype)
    return row["sqrt_a_next"] * x0 + row["dir"] * eps + row["sigma"] * noise

  return Plan(table, step, lambda model_fn, x, row: x0_and_eps(model_fn, x, row)[0])


def _log_alphas_cumprod(betas: np.ndarray) -> np.ndarray:
  return np.cumsum(np.log1p(-np.asarray(betas, np.float64)))


def ddim_plan(betas: np.ndarray, steps: np.ndarray, *, eta: float = 0.0, **kwargs) -> Plan:
  """DDIM(eta) on the increasing integer steps of the schedule `betas` (float64)."""
  steps = np.asarray(steps)
  return generalized_plan(steps, _log_alphas_cumprod(betas)[steps], kappa=eta, **kwargs)


def fastdpm_plan(betas: np.ndarray, num_steps: int, *, kind: str,
                 schedule: str = REFERENCE_SCHEDULE["fastdpm"], kappa: float = REFERENCE_KAPPA,
                 var_domain: str = "reference", **kwargs) -> Plan:
  """FastDPM VAR (continuous steps from S variances) or STEP (S integer steps), any kappa.

  var_domain: schedules.var_betas's search domain ("reference": FastDPM's code, "full").
  """
  if kind == "step":
    steps = schedules.step_schedule(len(betas), num_steps, schedule)
    return generalized_plan(steps, _log_alphas_cumprod(betas)[steps], kappa=kappa, **kwargs)
  if kind == "var":
    steps, log_levels = schedules.var_steps(float(betas[0]), float(betas[-1]), len(betas),
                                            num_steps, schedule, var_domain)
    return generalized_plan(steps, log_levels, kappa=kappa, **kwargs)
  raise ValueError(f"FastDPM kind {kind!r}: allowed {FASTDPM_KINDS}")


def ancestral_sample(model_fn: Callable, diffusion: diffusion_lib.GaussianDiffusion, x_T, rng, *,
                     variance_type: str = "fixedlarge", clip_denoised: bool = True,
                     depth_schedule: Optional[np.ndarray] = None):
  """Ho et al.'s Algorithm 2 from x_T over all T steps; depth_schedule[t] is k(t) if given."""
  plan = ancestral_plan(diffusion, variance_type=variance_type, clip_denoised=clip_denoised,
                        depth_schedule=depth_schedule)
  return run_plan(plan, model_fn, x_T, rng)


def surrogate_sample(plan: Plan, model_fn: Callable, surrogate_fn: Callable, t_mid: int,
                     num_timesteps: int, x_T, rng):
  """Surrogate diffusion (Algorithm 4): x~0 = surrogate_fn(key), noised to the first row of the
  plan at or below 1-based step t_mid (0-based t_mid - 1), then the plan's remaining rows.

  t_mid = T is the ordinary sampler from x_T (the prior stands in for q(x_T | x~0), whose
  abar_T ~ 0, and the surrogate is not run); t_mid = 0 returns x~0. x_T doubles as the noise
  of q(x_tmid | x~0). surrogate_fn(key) returns images of x_T's shape.
  """
  if t_mid >= num_timesteps:
    return run_plan(plan, model_fn, x_T, rng)
  surrogate_rng, plan_rng = jax.random.split(rng)
  x0 = surrogate_fn(surrogate_rng)
  rest = plan.rows_up_to(t_mid - 1)
  if rest.num_evaluations == 0:
    return x0
  x_start = rest.table["sqrt_a"][0] * x0 + rest.table["sqrt_1ma"][0] * x_T
  return run_plan(rest, model_fn, x_start, plan_rng)


def with_surrogate(plan: Plan, surrogate_fn: Callable, t_mid: int, num_timesteps: int):
  """(sampler(model_fn, x_T, rng) running Algorithm 4 from 1-based t_mid, its network evaluations
  per sample). surrogate_fn(key, batch_size) -> images of x_T's shape."""
  def sampler(model_fn, x_T, rng):
    return surrogate_sample(plan, model_fn, lambda key: surrogate_fn(key, x_T.shape[0]), t_mid,
                            num_timesteps, x_T, rng)
  if t_mid >= num_timesteps:
    return sampler, plan.num_evaluations
  return sampler, plan.rows_up_to(t_mid - 1).num_evaluations


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 in [0, 255]."""
  return np.asarray(np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255), np.uint8)
