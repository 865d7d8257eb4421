"""Noise schedules: beta_t for t = 1..T (stored 0-based: betas[i] is beta_{i+1}).

The network's step input is the 0-based index i (as in Ho et al.'s code), so step i of the
sampler uses betas[i] and alphas_cumprod[i] = prod_{j<=i} (1 - betas[j]).
"""

import math

import numpy as np

from jdiff import choices

BETA_SCHEDULES = choices.BETA_SCHEDULES


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """Ho et al.'s linear schedule, float64."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2((t/T + s) / (1 + s) * pi / 2)."""
  steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  alpha_bar = np.cos((steps + offset) / (1 + offset) * np.pi / 2) ** 2
  return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def get_betas(name: str, num_timesteps: int, beta_start: float = 1e-4,
              beta_end: float = 0.02) -> np.ndarray:
  if name == "linear":
    return linear_betas(num_timesteps, beta_start, beta_end)
  if name == "cosine":
    return cosine_betas(num_timesteps)
  raise ValueError(f"beta schedule {name!r}: allowed {BETA_SCHEDULES}")


# Step selection for fast samplers (respacing, DDIM, FastDPM STEP). Steps are 0-based.

RESPACINGS = choices.RESPACINGS
STEP_SCHEDULES = choices.STEP_SCHEDULES
VAR_SCHEDULES = choices.VAR_SCHEDULES
VAR_DOMAINS = choices.VAR_DOMAINS


def sectioned_steps(num_timesteps: int, section_counts) -> np.ndarray:
  """improved-diffusion's space_timesteps for a list of counts ("10,10,10").

  The chain 0..T-1 is cut into len(counts) consecutive sections of T // n steps (the first T % n
  sections one longer); section i keeps count_i steps, start + round(j * stride) for
  j = 0..count_i - 1 with stride = (size - 1) / (count_i - 1) (1 for a count of 1), the offset
  accumulated by repeated addition and rounded half to even, as the reference does (Python's
  round), so ties land where its steps do.
  """
  counts = tuple(int(c) for c in section_counts)
  num_sections = len(counts)
  if num_sections == 0 or any(c < 1 for c in counts):
    raise ValueError(f"section counts {counts}: need at least one, each >= 1")
  steps, start = [], 0
  for i, count in enumerate(counts):
    size = num_timesteps // num_sections + (1 if i < num_timesteps % num_sections else 0)
    if count > size:
      raise ValueError(f"section {i} has {size} steps of the chain's {num_timesteps}; "
                       f"cannot take {count} from it")
    stride = (size - 1) / (count - 1) if count > 1 else 1.0
    offset = 0.0
    for _ in range(count):
      steps.append(start + round(offset))
      offset += stride
    start += size
  return np.array(sorted(set(steps)), np.int64)


def respaced_steps(num_timesteps: int, num_steps: int, kind: str = "even") -> np.ndarray:
  """The increasing subsequence of 0..T-1 that respacing keeps.

  even:       num_steps steps evenly spaced over the chain (one section of sectioned_steps,
              round(i (T - 1) / (K - 1)));
  ddim:       range(0, T, stride) for the stride giving exactly num_steps steps ("ddimK");
  "10,10,10": improved-diffusion's sections (sectioned_steps); num_steps is their sum.
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps={num_steps}: must be in [1, {num_timesteps}]")
  if kind == "even":
    return sectioned_steps(num_timesteps, (num_steps,))
  if kind == "ddim":
    for stride in range(1, num_timesteps + 1):
      if len(range(0, num_timesteps, stride)) == num_steps:
        return np.arange(0, num_timesteps, stride, dtype=np.int64)
    raise ValueError(f"no stride gives exactly {num_steps} of {num_timesteps} steps; use 'even'")
  counts = choices.parse_section_counts(kind)
  if counts is None:
    raise ValueError(f"respacing {kind!r}: allowed {RESPACINGS} or counts per section, e.g. '10,10,10'")
  return sectioned_steps(num_timesteps, counts)


def respaced_betas(alphas_cumprod: np.ndarray, steps: np.ndarray) -> np.ndarray:
  """beta_{s_i} = 1 - abar_{s_i} / abar_{s_{i-1}}, with abar before the first step = 1."""
  abar = np.asarray(alphas_cumprod, np.float64)[np.asarray(steps)]
  return 1.0 - abar / np.append(1.0, abar[:-1])


def step_schedule(num_timesteps: int, num_steps: int, schedule: str) -> np.ndarray:
  """Integer steps for DDIM / FastDPM STEP, increasing (quadratic may repeat a step at small T/S).

  uniform:   range(0, T, T // S), ermongroup/ddim's skip_type="uniform" (its default); gives
             more than S steps when S does not divide T (T = 1000, S = 30: 31 steps);
  linear:    floor(i (T - 1) / (S - 1)), i = 0..S-1, FastDPM's STEP "linear" (exactly S steps,
             first 0 and last T - 1);
  quadratic: floor(linspace(0, sqrt(0.8 T), S)^2), DDIM's "quad" and FastDPM's "quadratic".
  """
  if num_steps < 2 or num_steps > num_timesteps:
    raise ValueError(f"num_steps={num_steps}: must be in [2, {num_timesteps}]")
  if schedule == "uniform":
    return np.arange(0, num_timesteps, num_timesteps // num_steps, dtype=np.int64)
  if schedule == "linear":
    stride = (num_timesteps - 1.0) / (num_steps - 1.0)
    return np.floor(np.arange(num_steps) * stride).astype(np.int64)
  if schedule == "quadratic":
    return np.floor(np.linspace(0, np.sqrt(0.8 * num_timesteps), num_steps) ** 2).astype(np.int64)
  raise ValueError(f"step schedule {schedule!r}: allowed {STEP_SCHEDULES}")


# FastDPM (Kong & Ping 2021): the continuous noise level of a linear schedule.
#
# With beta_i = beta_1 + (i - 1) d for i = 1..T, 1 - beta_i = d (c - i + 1), c = (1 - beta_1) / d,
# so prod_{i=1..n} (1 - beta_i) = d^n Gamma(c + 1) / Gamma(c - n + 1), which extends to real n.
# The network's 0-based step tau has n = tau + 1 factors (alphas_cumprod[tau]); the functions
# below take and return tau, so at integer tau they agree with the discrete schedule.


def _linear_constants(beta_start: float, beta_end: float, num_timesteps: int):
  if num_timesteps < 2 or beta_end <= beta_start:
    raise ValueError("the continuous map needs a linear schedule with T >= 2, beta_end > beta_start")
  d = (beta_end - beta_start) / (num_timesteps - 1)
  return d, (1.0 - beta_start) / d


def continuous_log_alpha_bar(tau, beta_start: float, beta_end: float, num_timesteps: int,
                             stirling: bool = True) -> np.ndarray:
  """log abar at real 0-based steps tau in [-1, T-1] (tau = -1 is abar = 1), float64.

  stirling=True: Stirling's series (FastDPM's choice), written as
    n log(1 - beta_1) - n - (c - n + 1/2) log1p(-n/c) + (1/c - 1/(c - n)) / 12,
  which avoids subtracting two ~c log c terms (those would cost ~1e-10 absolute accuracy).
  stirling=False: the Gamma form with exact lgamma.
  """
  d, c = _linear_constants(beta_start, beta_end, num_timesteps)
  n = np.asarray(tau, np.float64) + 1.0
  if stirling:
    return (n * np.log1p(-beta_start) - n - (c - n + 0.5) * np.log1p(-n / c)
            + (1.0 / c - 1.0 / (c - n)) / 12.0)
  lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
  return n * np.log(d) + lgamma(c + 1.0) - lgamma(c - n + 1.0)


def continuous_step(log_alpha_bar, beta_start: float, beta_end: float, num_timesteps: int,
                    iterations: int = 100) -> np.ndarray:
  """The real 0-based step tau whose continuous log abar is log_alpha_bar (bisection on [-1, T-1]).

  log abar is decreasing in tau, so bisection converges; targets outside the range clip to its ends.
  """
  target = np.asarray(log_alpha_bar, np.float64)
  low = np.full(target.shape, -1.0)
  high = np.full(target.shape, num_timesteps - 1.0)
  for _ in range(iterations):
    mid = 0.5 * (low + high)
    above = continuous_log_alpha_bar(mid, beta_start, beta_end, num_timesteps) > target
    low, high = np.where(above, mid, low), np.where(above, high, mid)
  return 0.5 * (low + high)


def _reference_bisection(fn, target: float, low: float, high: float,
                         relative_tolerance: float) -> float:
  """FastDPM's bisection (generate.py, bisearch) for a decreasing fn: the first midpoint x with
  target <= fn(x) <= (1 + tol) target (target > 0), at most 1000 halvings.

  jdiff follows its stopping rule and domain, not a bisection to convergence, so the noise levels
  are the reference's own (the product matches the full chain's to 1e-4, not to 1e-16).
  """
  x = 0.5 * (low + high)
  for _ in range(1000):
    x = 0.5 * (low + high)
    value = fn(x)
    if value < target:
      high = x
    elif value > (1.0 + relative_tolerance) * target:
      low = x
    else:
      break
  return x


def var_betas(beta_start: float, beta_end: float, num_timesteps: int, num_steps: int,
              schedule: str, domain: str = "reference") -> np.ndarray:
  """FastDPM VAR: S variances whose product prod(1 - beta~) should match the full chain's abar_T.

  linear:    beta~ = linspace(beta_1, x, S), x searched in (beta_1, 0.99);
  quadratic: beta~_i = beta_1 (1 + i x)^2, i = 0..S-1, x searched in (0, 0.95 / sqrt(beta_1) / S)
             with domain="reference" (FastDPM generate.py's get_VAR_noise), or up to beta~ <= 1
             with domain="full".
  x by FastDPM's bisection (prod(1 - beta~) within 1e-4 relative above abar_T). With T = 1000
  the reference's quadratic domain cannot reach abar_T at S <= 20 (the product ends 516x too
  large at S = 10, 3.9x at S = 20): its chain then starts from a lower noise level than the full
  chain's. jdiff's default keeps the reference's levels; domain="full" gives the paper's
  definition (the products match) at every S.
  """
  if num_steps < 2:
    raise ValueError(f"num_steps={num_steps}: must be >= 2")
  if domain not in VAR_DOMAINS:
    raise ValueError(f"VAR domain {domain!r}: allowed {VAR_DOMAINS}")
  target = float(np.prod(1.0 - linear_betas(num_timesteps, beta_start, beta_end)))
  full = domain == "full"
  if schedule == "linear":
    levels = lambda x: np.linspace(beta_start, x, num_steps)
    low, high = beta_start, (1.0 - 1e-12 if full else 0.99)
  elif schedule == "quadratic":
    levels = lambda x: beta_start * (1.0 + np.arange(num_steps) * x) ** 2
    low = 0.0
    high = ((1.0 / np.sqrt(beta_start) - 1.0) / (num_steps - 1) * (1.0 - 1e-12) if full
            else 0.95 / np.sqrt(beta_start) / num_steps)
  else:
    raise ValueError(f"VAR schedule {schedule!r}: allowed {VAR_SCHEDULES}")
  x = _reference_bisection(lambda x: float(np.prod(1.0 - levels(x))), target, low, high, 1e-4)
  return levels(x)


def var_steps(beta_start: float, beta_end: float, num_timesteps: int, num_steps: int,
              schedule: str, domain: str = "reference"):
  """(continuous 0-based steps, log noise levels) of FastDPM VAR, in increasing step order."""
  log_gamma = np.cumsum(np.log1p(-var_betas(beta_start, beta_end, num_timesteps, num_steps,
                                            schedule, domain)))
  return continuous_step(log_gamma, beta_start, beta_end, num_timesteps), log_gamma


# Multistep ODE solvers (DPM-Solver, DPM-Solver++, UniPC) on a discrete-time DDPM.
#
# alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t). At a real
# 0-based step tau, log alpha is the piecewise-linear interpolation of 0.5 log abar between integer
# steps: the official DPM-Solver code's NoiseScheduleVP('discrete') with its continuous time
# t = (tau + 1) / T (t_0 = 1 / T is step 0, t = 1 is step T - 1).

SOLVER_SPACINGS = choices.SOLVER_SPACINGS
DIFFUSERS_SPACINGS = choices.DIFFUSERS_SPACINGS


def solver_log_alpha(log_alphas_cumprod: np.ndarray, tau) -> np.ndarray:
  """log alpha at real 0-based steps tau in [0, T - 1] (0.5 log abar interpolated), float64."""
  log_a = 0.5 * np.asarray(log_alphas_cumprod, np.float64)
  return np.interp(np.asarray(tau, np.float64), np.arange(len(log_a), dtype=np.float64), log_a)


def solver_lambda(log_alpha) -> np.ndarray:
  """lambda = log alpha - log sigma, sigma = sqrt(1 - alpha^2); +inf at alpha = 1."""
  log_alpha = np.asarray(log_alpha, np.float64)
  with np.errstate(divide="ignore"):
    return log_alpha - 0.5 * np.log(-np.expm1(2.0 * log_alpha))


def solver_step_from_lambda(log_alphas_cumprod: np.ndarray, lam) -> np.ndarray:
  """The real step whose lambda is `lam` (the official code's inverse_lambda: log alpha =
  -0.5 log(1 + exp(-2 lambda)), then the interpolation inverted)."""
  log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, np.float64))
  log_a = 0.5 * np.asarray(log_alphas_cumprod, np.float64)
  steps = np.arange(len(log_a), dtype=np.float64)
  return np.interp(log_alpha, log_a[::-1], steps[::-1])


def solver_steps(log_alphas_cumprod: np.ndarray, num_steps: int, spacing: str):
  """(the num_steps network steps, decreasing; the final step, or None for sigma = 0).

  Official DPM-Solver / UniPC code (model at real steps, ending at step 0's noise level, t_0 = 1/T):
    time_uniform:   tau = linspace(T - 1, 0, S + 1) (t = linspace(1, 1/T, S + 1));
    time_quadratic: t = linspace(1, sqrt(1/T), S + 1)^2, tau = T t - 1;
    logsnr:         lambda uniform between lambda(T - 1) and lambda(0), tau by inverse_lambda.
  The network is called at the first S; the last is where the sample ends (x at step 0's level).
  diffusers' DPMSolverMultistepScheduler / UniPCMultistepScheduler timestep_spacing (integer
  steps, steps_offset 0), ending at sigma = 0 (final_sigmas_type 'zero'):
    linspace: round(linspace(0, T - 1, S + 1))[::-1][:-1];
    leading:  arange(S + 1)[::-1][:-1] * (T // (S + 1));
    trailing: round(arange(T, 0, -T / S)) - 1.
  """
  num_timesteps = len(log_alphas_cumprod)
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps={num_steps}: must be in [1, {num_timesteps}]")
  T = num_timesteps  # pylint: disable=invalid-name
  if spacing == "time_uniform":
    taus = np.linspace(T - 1.0, 0.0, num_steps + 1)
  elif spacing == "time_quadratic":
    t = np.linspace(1.0, np.sqrt(1.0 / T), num_steps + 1) ** 2
    taus = T * t - 1.0
  elif spacing == "logsnr":
    ends = solver_lambda(solver_log_alpha(log_alphas_cumprod, [T - 1.0, 0.0]))
    taus = solver_step_from_lambda(log_alphas_cumprod, np.linspace(ends[0], ends[1], num_steps + 1))
  elif spacing == "linspace":
    return np.linspace(0, T - 1, num_steps + 1).round()[::-1][:-1].astype(np.float64), None
  elif spacing == "leading":
    ratio = T // (num_steps + 1)
    return (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1].astype(np.float64), None
  elif spacing == "trailing":
    return (np.arange(T, 0, -T / num_steps).round() - 1).astype(np.float64), None
  else:
    raise ValueError(f"solver spacing {spacing!r}: allowed {SOLVER_SPACINGS}")
  taus = np.clip(taus, 0.0, T - 1.0)
  return taus[:-1], float(taus[-1])
