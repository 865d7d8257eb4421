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


def respaced_steps(num_timesteps: int, num_steps: int, kind: str = "even") -> np.ndarray:
  """An increasing subsequence of 0..T-1 with num_steps entries.

  even: round(linspace(0, T-1, K)) (improved DDPM's evenly spaced K steps);
  ddim: range(0, T, stride) for the stride giving exactly K steps ("ddimK").
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps={num_steps}: must be in [1, {num_timesteps}]")
  if kind == "even":
    return np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int64)
  if kind == "ddim":
    for stride in range(1, num_timesteps + 1):
      if len(range(0, num_timesteps, stride)) == num_steps:
        return np.arange(0, num_timesteps, stride, dtype=np.int64)
    raise ValueError(f"no stride gives exactly {num_steps} of {num_timesteps} steps; use 'even'")
  raise ValueError(f"respacing {kind!r}: allowed {RESPACINGS}")


def respaced_betas(alphas_cumprod: np.ndarray, steps: np.ndarray) -> np.ndarray:
  """beta_{s_i} = 1 - abar_{s_i} / abar_{s_{i-1}}, with abar before the first step = 1."""
  abar = np.asarray(alphas_cumprod, np.float64)[np.asarray(steps)]
  return 1.0 - abar / np.append(1.0, abar[:-1])


def step_schedule(num_timesteps: int, num_steps: int, schedule: str) -> np.ndarray:
  """S integer steps for DDIM / FastDPM STEP (may repeat a step for quadratic at small T/S).

  uniform:   floor(i (T - 1) / (S - 1)), i = 0..S-1;
  quadratic: floor(linspace(0, sqrt(0.8 T), S)^2) (DDIM's and FastDPM's choice).
  """
  if num_steps < 2:
    raise ValueError(f"num_steps={num_steps}: must be >= 2")
  if schedule == "uniform":
    return np.arange(num_steps, dtype=np.int64) * (num_timesteps - 1) // (num_steps - 1)
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


def _bisect_increasing(fn, target: float, low: float, high: float, iterations: int = 200) -> float:
  """x in [low, high] with fn(x) = target for an increasing fn."""
  for _ in range(iterations):
    mid = 0.5 * (low + high)
    low, high = (mid, high) if fn(mid) < target else (low, mid)
  return 0.5 * (low + high)


def var_betas(beta_start: float, beta_end: float, num_timesteps: int, num_steps: int,
              schedule: str) -> np.ndarray:
  """FastDPM VAR: S variances whose product prod(1 - beta~) equals the full process's abar_T.

  linear:    beta~ = linspace(beta_1, x, S);
  quadratic: beta~_i = beta_1 (1 + i x)^2, i = 0..S-1;
  x found by bisection (-log prod(1 - beta~) increases with x).
  """
  if num_steps < 2:
    raise ValueError(f"num_steps={num_steps}: must be >= 2")
  target = -np.sum(np.log1p(-linear_betas(num_timesteps, beta_start, beta_end)))
  if schedule == "linear":
    levels = lambda x: np.linspace(beta_start, x, num_steps)
    high = 1.0 - 1e-12
  elif schedule == "quadratic":
    levels = lambda x: beta_start * (1.0 + np.arange(num_steps) * x) ** 2
    high = (1.0 / np.sqrt(beta_start) - 1.0) / (num_steps - 1) * (1.0 - 1e-12)
  else:
    raise ValueError(f"VAR schedule {schedule!r}: allowed {VAR_SCHEDULES}")
  x = _bisect_increasing(lambda x: -np.sum(np.log1p(-levels(x))), target, 0.0, high)
  return levels(x)


def var_steps(beta_start: float, beta_end: float, num_timesteps: int, num_steps: int,
              schedule: str):
  """(continuous 0-based steps, log noise levels) of FastDPM VAR, in increasing step order."""
  log_gamma = np.cumsum(np.log1p(-var_betas(beta_start, beta_end, num_timesteps, num_steps,
                                            schedule)))
  return continuous_step(log_gamma, beta_start, beta_end, num_timesteps), log_gamma
