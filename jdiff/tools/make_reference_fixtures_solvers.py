"""Makes tests/fixtures/solvers/diffusers_solvers.json: diffusers' multistep schedulers run on the
closed-form Gaussian model, their timesteps and samples step for step.

Run once, with the reference library (torch, diffusers), not jdiff:

  python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch==2.13.0 diffusers
  /tmp/refvenv/bin/python jdiff/tools/make_reference_fixtures_solvers.py \\
      --out=tests/fixtures/solvers/diffusers_solvers.json

The model: data N(mu, s^2) per value (mu, s^2 and the start z below), T = 1000 linear betas
1e-4 .. 0.02 (diffusers' own float32 schedule), the exact eps predictor
E[eps | x_t] = sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2) at the scheduler's timestep t
(alpha^2 = alphas_cumprod[t]), start x = alpha mu + sqrt(alpha^2 s^2 + sigma^2) z at the first
timestep. For each case: DPMSolverMultistepScheduler (dpmsolver++ with final_sigmas_type
'zero'; dpmsolver with 'sigma_min', which it requires) or UniPCMultistepScheduler (bh1 / bh2),
solver_order, timestep_spacing, num_inference_steps, everything else at diffusers' defaults
(lower_order_final True, predict_x0 True, no thresholding); it records the timesteps and the
sample after every step (float64 inputs; diffusers keeps its sigmas in float32).
"""

import argparse
import json
import os

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

MU = [0.3, -0.2, 0.5, 0.0]
S2 = [0.25, 0.5, 0.36, 1.0]
Z = np.linspace(-2.0, 2.0, 8).reshape(2, 4).tolist()

CASES = [
    # (scheduler, algorithm_type or solver_type, order, spacing, steps)
    ("dpm", "dpmsolver++", 2, "linspace", 10),
    ("dpm", "dpmsolver++", 2, "trailing", 25),
    ("dpm", "dpmsolver++", 2, "leading", 20),
    ("dpm", "dpmsolver++", 3, "linspace", 12),
    ("dpm", "dpmsolver++", 3, "trailing", 20),
    ("dpm", "dpmsolver", 2, "linspace", 10),
    ("dpm", "dpmsolver", 3, "trailing", 20),
    ("unipc", "bh1", 2, "linspace", 10),
    ("unipc", "bh2", 2, "trailing", 20),
    ("unipc", "bh2", 3, "leading", 12),
    ("unipc", "bh1", 3, "linspace", 25),
    ("unipc", "bh2", 2, "linspace", 5),
]


def run_case(kind, variant, order, spacing, steps):
  common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                solver_order=order, timestep_spacing=spacing)
  if kind == "dpm":
    scheduler = DPMSolverMultistepScheduler(
        algorithm_type=variant,
        final_sigmas_type="zero" if variant == "dpmsolver++" else "sigma_min", **common)
  else:
    scheduler = UniPCMultistepScheduler(solver_type=variant, **common)
  scheduler.set_timesteps(steps)
  abar = scheduler.alphas_cumprod.to(torch.float64)
  mu = torch.tensor(MU, dtype=torch.float64)
  s2 = torch.tensor(S2, dtype=torch.float64)
  t0 = int(scheduler.timesteps[0])
  alpha = abar[t0].sqrt()
  x = alpha * mu + torch.sqrt(alpha ** 2 * s2 + 1 - alpha ** 2) * torch.tensor(Z, dtype=torch.float64)
  start = x.clone()
  trajectory = []
  for t in scheduler.timesteps:
    alpha = abar[int(t)].sqrt()
    sigma = torch.sqrt(1 - alpha ** 2)
    eps = sigma * (x - alpha * mu) / (alpha ** 2 * s2 + sigma ** 2)
    x = scheduler.step(eps, t, x, return_dict=False)[0]
    trajectory.append(x.tolist())
  return {"scheduler": kind, "variant": variant, "order": order, "spacing": spacing,
          "steps": steps, "timesteps": [int(t) for t in scheduler.timesteps],
          "start": start.tolist(), "trajectory": trajectory}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="tests/fixtures/solvers/diffusers_solvers.json")
  args = parser.parse_args()
  import diffusers  # pylint: disable=g-import-not-at-top
  result = {"diffusers": diffusers.__version__, "torch": torch.__version__, "mu": MU, "s2": S2,
            "z": Z, "cases": [run_case(*case) for case in CASES]}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f)
  print(f"wrote {args.out}: {len(CASES)} cases, diffusers {diffusers.__version__}")


if __name__ == "__main__":
  main()
