"""Noise schedules: beta_t for t = 1..T (stored 0-based: betas[i] is beta_{i+1}).

The network's step input is the 0-based index i (as in Ho et al.'s code), so step i of the
sampler uses betas[i] and alphas_cumprod[i] = prod_{j<=i} (1 - betas[j]).
"""

import numpy as np

BETA_SCHEDULES = ("linear", "cosine")


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
