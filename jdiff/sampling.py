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
Defaults are those of each sampler's reference code (its record in jdiff/samplers.py, the
registry that configs, builders, evaluation names, the benches and the tables read):
ancestral and respaced clip the x0 prediction to [-1, 1] (Ho et al.'s p_sample, improved-diffusion's
sampling scripts); DDIM (ermongroup/ddim generalized_steps) and FastDPM (FastDPM_pytorch
STEP_sampling / VAR_sampling) do not. DDIM picks steps range(0, T, T // S) by default, FastDPM's
CIFAR-10 commands use its quadratic schedule; FastDPM's kappa defaults to 1 (DDPM-rev).
  dpm_solver_pp, dpm_solver, unipc  multistep ODE solvers (solver_plan / multistep_plan, below):
             DPM-Solver++ 2M / 3M (data prediction), DPM-Solver 2M / 3M (noise prediction),
             UniPC bh1 / bh2; their carry holds x and the previous model outputs.
Adaptive depth: depth_schedule[t] = k(t) for integer steps 0..T-1; a real step t uses
k(floor(t)), the deeper (never cheaper) of its two neighbours' networks.
"""

import dataclasses
import functools
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import choices
from jdiff import diffusion as diffusion_lib
from jdiff import schedules

FASTDPM_KINDS = choices.FASTDPM_KINDS

# What each sampler's reference code does when nothing is said (config: clip_x0 / schedule
# "auto") is in its registry record (jdiff/samplers.py: clip_x0, default_schedule).
REFERENCE_KAPPA = 1.0  # FastDPM generate.py's -kappa default (DDPM-rev)


def call_model(model_fn: Callable, x, t, depth=None):
  """model_fn(x, t[B]) at the full network, model_fn(x, t[B], depth=k) with a depth schedule."""
  t_vec = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
  if depth is None:
    return model_fn(x, t_vec)
  return model_fn(x, t_vec, depth=depth)


def _x0_and_eps(model_fn, x, row, *, variance_type: str, clip_denoised: bool):
  """(x0, eps) predicted at a table row with keys t, sqrt_a (sqrt alpha-bar), sqrt_1ma
  (sqrt(1 - alpha-bar)) and optionally depth; with clip_denoised, x0 is clipped to [-1, 1] and
  eps recomputed from it (DDIM's and the solvers' shared first half of a step)."""
  output = call_model(model_fn, x, row["t"], row.get("depth"))
  eps, _ = diffusion_lib.split_model_output(output, variance_type)
  x0 = (x - row["sqrt_1ma"] * eps) / row["sqrt_a"]
  if clip_denoised:
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = (x - row["sqrt_a"] * x0) / row["sqrt_1ma"]
  return x0, eps


def run_step_table(step_fn: Callable, x_init, table: dict):
  """x <- step_fn(x, row) for each row of the table (dict of equal-length arrays), in one scan."""
  def body(x, row):
    return step_fn(x, row), None
  x, _ = jax.lax.scan(body, x_init, {k: jnp.asarray(v) for k, v in table.items()})
  return x


def _identity(x):
  return x


@dataclasses.dataclass(frozen=True)
class Plan:
  """A reverse process as data: table rows (noisiest first), step(model_fn, carry, row, rng) ->
  carry, and predict_x0(model_fn, x, row) -> the row's x0 estimate (clipped as the step clips it).

  The carry is x itself for one-step samplers; multistep solvers carry x and their previous model
  outputs (init(x) -> carry, final(carry) -> x). rebuild(keep), where given, is the plan on the
  rows of the boolean mask `keep` started afresh (a multistep solver's first kept row has no
  history, so its coefficients change); without it a sub-plan is the rows themselves.
  """
  table: Dict[str, np.ndarray]
  step: Callable
  predict_x0: Callable
  init: Callable = _identity
  final: Callable = _identity
  rebuild: Optional[Callable[[np.ndarray], "Plan"]] = None

  @property
  def num_evaluations(self) -> int:
    """Network evaluations per sample (one per row)."""
    return len(self.table["t"])

  def _subplan(self, keep: np.ndarray, restart: bool) -> "Plan":
    if restart and self.rebuild is not None and keep.any():
      return self.rebuild(keep)
    return dataclasses.replace(self, table={k: v[keep] for k, v in self.table.items()})

  def rows_up_to(self, t_max: float) -> "Plan":
    """The rows whose network step is <= t_max (a suffix, since steps decrease)."""
    keep = np.asarray(self.table["t"], np.float64) <= t_max + 1e-6
    return self._subplan(keep, restart=not keep[0])

  def rows_down_to(self, t_min: float) -> "Plan":
    """The rows whose network step is >= t_min (a prefix: their history is unchanged)."""
    keep = np.asarray(self.table["t"], np.float64) >= t_min - 1e-6
    return self._subplan(keep, restart=False)


def run_plan(plan: Plan, model_fn: Callable, x_init, rng):
  carry = run_step_table(lambda carry, row: plan.step(model_fn, carry, row, rng),
                         plan.init(x_init), plan.table)
  return plan.final(carry)


def run_plan_to_x0(plan: Plan, model_fn: Callable, x_init, rng):
  """All rows but the last as run_plan does, then the last row's x0 estimate at the x it gets.

  A low-resolution DDPM surrogate stops this way at t_mid: its chain from T down to x_{t_mid},
  then x~0 = (x_{t_mid} - sqrt(1 - abar) eps(x_{t_mid})) / sqrt(abar).
  """
  head = {k: v[:-1] for k, v in plan.table.items()}
  last = {k: jnp.asarray(v[-1]) for k, v in plan.table.items()}
  carry = run_step_table(lambda carry, row: plan.step(model_fn, carry, row, rng),
                         plan.init(x_init), head)
  return plan.predict_x0(model_fn, plan.final(carry), last)


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

  x0_and_eps = functools.partial(_x0_and_eps, variance_type=variance_type,
                                 clip_denoised=clip_denoised)

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
                 schedule: str = "quadratic", kappa: float = REFERENCE_KAPPA,
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


# ------------------------------------------------------------------------------------------------
# Multistep ODE solvers: DPM-Solver (noise prediction), DPM-Solver++ (data prediction), UniPC.
#
# On a grid of S network steps tau_0 > ... > tau_{S-1} and a final level (schedules.solver_steps),
# row i calls the network at (x_i, tau_i), giving m_i (x0 for DPM-Solver++ and UniPC, eps for
# DPM-Solver), and moves x_i to the next level with m_i and the previous outputs m_{i-1}, m_{i-2}
# (Adams-Bashforth style). UniPC first corrects x_i with m_i (UniC, no extra evaluation). Every
# such update is linear in (x, the model outputs): its coefficients are formed on the host in
# float64 from the papers' formulas (below) and the table holds them, so one scan step is
#   m = convert(model(x, tau));  x <- c_self x + c_last x_last + c_new m + sum_k c_hist[k] H[k]
#   (UniC);  x_last <- x;  x <- p_x x + p_new m + sum_k p_hist[k] H[k];  H <- [m, H[:-1]]
# with H the previous outputs, newest first. Lower orders have zero coefficients, not branches.

SOLVER_KINDS = ("dpm_solver", "dpm_solver_pp", "unipc")
UNIPC_VARIANTS = choices.UNIPC_VARIANTS


def dpm_solver_update(x, m, lam, lam_next, log_alpha, log_alpha_next, sigma, sigma_next,
                      order: int, data_prediction: bool):
  """One multistep DPM-Solver (noise prediction) / DPM-Solver++ (data prediction) update.

  m = [m_i, m_{i-1}, m_{i-2}] (newest first) at lambdas lam = [lam_i, lam_{i-1}, lam_{i-2}];
  h = lam_next - lam_i, r0 = (lam_i - lam_{i-1}) / h, r1 = (lam_{i-1} - lam_{i-2}) / h.
  DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++"): order 1 is its Eq. (9) (DDIM),
    x' = sigma'/sigma x - alpha' expm1(-h) m_i;
  order 2 is its Algorithm 2 (multistep second-order, Eq. (10)'s D = (1 + 1/(2 r0)) m_i -
    1/(2 r0) m_{i-1}): x' = sigma'/sigma x - alpha' expm1(-h) (m_i + (m_i - m_{i-1}) / (2 r0));
  order 3 is its Appendix's multistep third-order (the official code's
    multistep_dpm_solver_third_update): D1_0 = (m_i - m_{i-1}) / r0, D1_1 = (m_{i-1} -
    m_{i-2}) / r1, D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1),
    x' = sigma'/sigma x - alpha' phi1 m_i + alpha' phi2 D1 - alpha' phi3 D2 with
    phi1 = expm1(-h), phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2.
  DPM-Solver (Lu et al. 2022a, "DPM-Solver"): order 1 is its Eq. (3.7) (DPM-Solver-1 = DDIM),
    x' = alpha'/alpha x - sigma' expm1(h) m_i; the multistep orders 2 and 3 are Appendix B's
    (official multistep_dpm_solver_{second,third}_update, solver_type 'dpmsolver'):
    x' = alpha'/alpha x - sigma' phi1 (m_i + D1_0 / 2) (order 2), and
    x' = alpha'/alpha x - sigma' phi1 m_i - sigma' phi2 D1 - sigma' phi3 D2 (order 3) with
    phi1 = expm1(h), phi2 = phi1 / h - 1, phi3 = phi2 / h - 1/2.
  Works elementwise on numpy arrays (float64); the plan evaluates it on basis vectors to get
  its coefficients. sigma_next = 0 (lam_next = inf) is the step to x0 (order 1 only).
  """
  h = lam_next - lam[0]
  if data_prediction:
    phi1 = np.expm1(-h)
    x_next = sigma_next / sigma * x - np.exp(log_alpha_next) * phi1 * m[0]
    scale = np.exp(log_alpha_next)
  else:
    phi1 = np.expm1(h)
    x_next = np.exp(log_alpha_next - log_alpha) * x - sigma_next * phi1 * m[0]
    scale = sigma_next
  if order == 1:
    return x_next
  r0 = (lam[0] - lam[1]) / h
  d1_0 = (m[0] - m[1]) / r0
  if order == 2:
    return x_next - 0.5 * scale * phi1 * d1_0
  r1 = (lam[1] - lam[2]) / h
  d1_1 = (m[1] - m[2]) / r1
  d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
  d2 = (d1_0 - d1_1) / (r0 + r1)
  if data_prediction:
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    return x_next + scale * phi2 * d1 - scale * phi3 * d2
  phi2 = phi1 / h - 1.0
  phi3 = phi2 / h - 0.5
  return x_next - scale * phi2 * d1 - scale * phi3 * d2


def _unipc_coefficients(h, rks, order: int, variant: str):
  """UniPC's (expm1(hh), B(h), R, b) for data prediction (Zhao et al. 2023, Eq. (8)-(9) and
  Algorithms 1-2): hh = -h, B(h) = hh (bh1) or expm1(hh) (bh2); row j - 1 of R is rks^(j-1)
  and b_j = j! phi_{j+1}(hh) hh / B(h) (phi_k the exponential integrators' phi functions), by the
  official code's recursion: h_phi starts at expm1(hh) / hh - 1, b_j = h_phi j! / B(h),
  h_phi <- h_phi / hh - 1 / (j + 1)!."""
  hh = -h
  h_phi_1 = np.expm1(hh)
  if variant == "bh1":
    b_h = hh
  elif variant == "bh2":
    b_h = np.expm1(hh)
  else:
    raise ValueError(f"UniPC variant {variant!r}: allowed {UNIPC_VARIANTS}")
  h_phi_k = h_phi_1 / hh - 1.0
  factorial = 1.0
  rows, b = [], []
  for j in range(1, order + 1):
    rows.append(np.asarray(rks, np.float64) ** (j - 1))
    b.append(h_phi_k * factorial / b_h)
    factorial *= j + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  return h_phi_1, b_h, np.array(rows), np.array(b)


def unipc_predictor(x, m, lam, lam_next, alpha_next, sigma, sigma_next, order: int, variant: str):
  """UniP-p (Zhao et al. 2023, "UniPC", Algorithm 2 / Eq. (7) with data prediction) from lam[0]
  to lam_next with m = [m_i, m_{i-1}, ...] at lambdas lam (newest first): rk = (lam_{i-k} -
  lam_i) / h, D1_k = (m_{i-k} - m_i) / rk, rhos_p = 1/2 for p = 2 (the codes' simplification),
  else the solution of R[:p-1, :p-1] rho = b[:p-1];
    x' = sigma'/sigma x - alpha' expm1(-h) m_i - alpha' B(h) sum_k rho_k D1_k."""
  h = lam_next - lam[0]
  x_next = sigma_next / sigma * x - alpha_next * np.expm1(-h) * m[0]
  if order == 1:
    return x_next
  rks = [(lam[k] - lam[0]) / h for k in range(1, order)]
  _, b_h, rows, b = _unipc_coefficients(h, rks + [1.0], order, variant)
  rhos = np.array([0.5]) if order == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1])
  residual = sum(rho * (m[k] - m[0]) / rk for k, (rho, rk) in enumerate(zip(rhos, rks), start=1))
  return x_next - alpha_next * b_h * residual


def unipc_corrector(x_last, m_new, m, lam, lam_new, alpha_new, sigma_last, sigma_new,
                    order: int, variant: str):
  """UniC-p (Zhao et al. 2023, Algorithm 1 / Eq. (5)-(6), data prediction): the sample at lam_new
  again, from x_last at lam[0] with m = [m_{i-1}, m_{i-2}, ...] and the new output m_new at the
  predicted sample: rks = [(lam_k - lam_0) / h ..., 1], rhos_c = 1/2 for p = 1, else R rho = b;
    x^c = sigma_new/sigma_last x_last - alpha_new expm1(-h) m_0
          - alpha_new B(h) (sum_k rho_k D1_k + rho_p (m_new - m_0))."""
  h = lam_new - lam[0]
  x_c = sigma_new / sigma_last * x_last - alpha_new * np.expm1(-h) * m[0]
  rks = [(lam[k] - lam[0]) / h for k in range(1, order)]
  _, b_h, rows, b = _unipc_coefficients(h, rks + [1.0], order, variant)
  rhos = np.array([0.5]) if order == 1 else np.linalg.solve(rows, b)
  residual = sum(rho * (m[k] - m[0]) / rk for k, (rho, rk) in enumerate(zip(rhos[:-1], rks), start=1))
  return x_c - alpha_new * b_h * (residual + rhos[-1] * (m_new - m[0]))


def solver_orders(num_steps: int, order: int, lower_order_final_below: float,
                  final_is_x0: bool) -> np.ndarray:
  """The predictor's order at each row: min(order, i + 1) (warm-up: the history is short),
  min(.., S - i) when S < lower_order_final_below (the references' lower_order_final: the
  official DPM-Solver code below 10 steps, diffusers' DPM-Solver below 15, both UniPC codes
  always), and 1 on a last step to sigma = 0 (diffusers' final step)."""
  i = np.arange(num_steps)
  orders = np.minimum(order, i + 1)
  if num_steps < lower_order_final_below:
    orders = np.minimum(orders, num_steps - i)
  if final_is_x0:
    orders[-1] = 1
  return orders


def _basis(n):
  return list(np.eye(n))


def solver_plan(betas: np.ndarray, steps: np.ndarray, final_step: Optional[float], *,
                kind: str, order: int = 2, variant: str = "bh1",
                lower_order_final_below: float = 10, variance_type: str = "fixedlarge",
                clip_denoised: bool = False, depth_schedule=None) -> Plan:
  """A multistep solver over the decreasing network steps `steps` (real or integer, 0-based),
  ending at `final_step`'s noise level, or at sigma = 0 (x0) when final_step is None.

  kind: dpm_solver (noise prediction), dpm_solver_pp (data prediction), unipc (data
  prediction; variant bh1 | bh2). order: 1-3 (2M, 3M). clip_denoised clips the x0 prediction
  to [-1, 1] (DPM-Solver: eps recomputed from it), off in the references (their
  correcting_x0_fn / thresholding is None / False by default). Only the eps half of a learned-
  variance output is read.
  """
  if kind not in SOLVER_KINDS:
    raise ValueError(f"solver {kind!r}: allowed {SOLVER_KINDS}")
  if order not in choices.SOLVER_ORDERS:
    raise ValueError(f"solver order {order}: allowed {choices.SOLVER_ORDERS}")
  if final_step is None and kind == "dpm_solver":
    raise ValueError("DPM-Solver's noise prediction cannot step to sigma = 0 (its update is "
                     "sigma' expm1(h) eps with h = inf); end at a step (diffusers: sigma_min)")
  steps = np.asarray(steps, np.float64)
  num = len(steps)
  log_abar = _log_alphas_cumprod(betas)
  log_alpha = schedules.solver_log_alpha(log_abar, steps)
  if final_step is None:
    log_alpha_end = 0.0
  else:
    log_alpha_end = float(schedules.solver_log_alpha(log_abar, final_step))
  log_alpha_all = np.append(log_alpha, log_alpha_end)
  sigma_all = np.sqrt(-np.expm1(2.0 * log_alpha_all))
  lam_all = schedules.solver_lambda(log_alpha_all)
  orders = solver_orders(num, order, lower_order_final_below, final_step is None)
  history = max(order, 1) if kind == "unipc" else max(order - 1, 1)
  data_prediction = kind != "dpm_solver"

  # Coefficients by linearity: each update evaluated on the basis (x, m_i, H_0, .., H_{K-1}).
  basis = _basis(2 + history)
  pred = np.zeros((num, 2 + history))
  corr = np.zeros((num, 3 + history))  # x (self), x_last, m_new, H_0.. ; identity when absent
  corr[:, 0] = 1.0
  with np.errstate(divide="ignore", invalid="ignore"):
    for i in range(num):
      lams = [lam_all[max(i - k, 0)] for k in range(3)]
      ms = [basis[1]] + [basis[2 + k] for k in range(history)]
      if kind == "unipc":
        value = unipc_predictor(basis[0], ms, lams, lam_all[i + 1], np.exp(log_alpha_all[i + 1]),
                                sigma_all[i], sigma_all[i + 1], int(orders[i]), variant)
      else:
        value = dpm_solver_update(basis[0], ms, lams, lam_all[i + 1], log_alpha_all[i],
                                  log_alpha_all[i + 1], sigma_all[i], sigma_all[i + 1],
                                  int(orders[i]), data_prediction)
      pred[i] = value
      if kind == "unipc" and i > 0:
        # UniC over the previous interval, of the previous predictor's order; basis of corr:
        # x (unused), x_last, m_new, H_0 = m_{i-1}, H_1 = m_{i-2}, ...
        cb = _basis(3 + history)
        prev = [cb[3 + k] for k in range(history)]
        lams_prev = [lam_all[max(i - 1 - k, 0)] for k in range(3)]
        corr[i] = unipc_corrector(cb[1], cb[2], prev, lams_prev, lam_all[i],
                                  np.exp(log_alpha_all[i]), sigma_all[i - 1], sigma_all[i],
                                  int(orders[i - 1]), variant)
  f32 = lambda v: np.asarray(v, np.float32)
  table = {
      "t": f32(steps), "index": np.arange(num - 1, -1, -1, dtype=np.int32),
      "sqrt_a": f32(np.exp(log_alpha)), "sqrt_1ma": f32(sigma_all[:-1]),
      "order": orders.astype(np.int32),
      "p_x": f32(pred[:, 0]), "p_new": f32(pred[:, 1]), "p_hist": f32(pred[:, 2:]),
  }
  if kind == "unipc":
    table.update({"c_self": f32(corr[:, 0]), "c_last": f32(corr[:, 1]),
                  "c_new": f32(corr[:, 2]), "c_hist": f32(corr[:, 3:])})
  table = _with_depth(table, depth_schedule)

  x0_and_eps = functools.partial(_x0_and_eps, variance_type=variance_type,
                                 clip_denoised=clip_denoised)

  def combine(coefficients, hist):
    return jnp.tensordot(coefficients, hist, axes=1)

  def init(x):
    carry = {"x": x, "hist": jnp.zeros((history,) + x.shape, x.dtype)}
    if kind == "unipc":
      carry["x_last"] = x
    return carry

  def step(model_fn, carry, row, rng):
    del rng  # deterministic
    x, hist = carry["x"], carry["hist"]
    x0, eps = x0_and_eps(model_fn, x, row)
    m = x0 if data_prediction else eps
    new = dict(carry)
    if kind == "unipc":
      x = (row["c_self"] * x + row["c_last"] * carry["x_last"] + row["c_new"] * m
           + combine(row["c_hist"], hist))
      new["x_last"] = x
    new["x"] = row["p_x"] * x + row["p_new"] * m + combine(row["p_hist"], hist)
    new["hist"] = jnp.concatenate([m[None], hist[:-1]], axis=0)
    return new

  def rebuild(keep):
    return solver_plan(betas, steps[keep], final_step, kind=kind, order=order, variant=variant,
                       lower_order_final_below=lower_order_final_below,
                       variance_type=variance_type, clip_denoised=clip_denoised,
                       depth_schedule=depth_schedule)

  return Plan(table, step, lambda model_fn, x, row: x0_and_eps(model_fn, x, row)[0],
              init=init, final=lambda carry: carry["x"], rebuild=rebuild)


# The references' rules for the lower-order final steps (solver_orders' lower_order_final_below).
LOWER_ORDER_FINAL_BELOW = {
    ("official", "dpm_solver"): 10, ("official", "dpm_solver_pp"): 10,  # dpm_solver_pytorch.sample
    ("official", "unipc"): np.inf,                                      # UniPC sample()
    ("diffusers", "dpm_solver"): 15, ("diffusers", "dpm_solver_pp"): 15,  # DPMSolverMultistep
    ("diffusers", "unipc"): np.inf,                                      # UniPCMultistep
}


def multistep_plan(betas: np.ndarray, num_steps: int, *, kind: str, spacing: str = "time_uniform",
                   order: int = 2, variant: str = "bh1", lower_order_final: bool = True,
                   **kwargs) -> Plan:
  """A solver with S = num_steps network evaluations on the spacing's steps.

  Official spacings (time_uniform, logsnr, time_quadratic): the official DPM-Solver / UniPC
  codes' multistep sample() (t_end = 1/T: the sample ends at step 0's noise level, the last
  model value is not computed; lower_order_final below 10 steps for DPM-Solver, always for
  UniPC). diffusers' spacings (linspace, leading, trailing): DPMSolverMultistepScheduler /
  UniPCMultistepScheduler step for step (their integer timesteps; the last step to sigma = 0, a
  first-order step to the x0 prediction; DPM-Solver's noise-prediction form ends at step 0's
  level, diffusers' final_sigmas_type='sigma_min' that it requires; lower_order_final below
  15 steps for DPM-Solver, always for UniPC).
  """
  log_abar = _log_alphas_cumprod(betas)
  steps, final_step = schedules.solver_steps(log_abar, num_steps, spacing)
  convention = "diffusers" if spacing in choices.DIFFUSERS_SPACINGS else "official"
  if convention == "diffusers" and kind == "dpm_solver":
    final_step = 0.0
  below = LOWER_ORDER_FINAL_BELOW[(convention, kind)] if lower_order_final else 0
  return solver_plan(betas, steps, final_step, kind=kind, order=order, variant=variant,
                     lower_order_final_below=below, **kwargs)
