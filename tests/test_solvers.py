"""Multistep solvers (DPM-Solver++ 2M / 3M, DPM-Solver 2M, UniPC bh1 / bh2) and the sampler registry.

The closed-form model: data N(mu, s^2) per pixel. With alpha = sqrt(abar), sigma = sqrt(1 - abar),
x_t ~ N(alpha mu, alpha^2 s^2 + sigma^2) and the exact eps predictor is
E[eps | x_t] = sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2). The probability-flow ODE keeps
the standardised value z = (x - alpha mu) / sqrt(alpha^2 s^2 + sigma^2) of every trajectory (the
flow of a Gaussian marginal is its monotone affine transport), so its exact map from level
(alpha, sigma) to (alpha', sigma') is
  x' = alpha' mu + sqrt((alpha'^2 s^2 + sigma'^2) / (alpha^2 s^2 + sigma^2)) (x - alpha mu),
which at sigma' = 0 is x_0 = mu + s (x_T - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2).
The model evaluates log alpha at real steps by the same piecewise-linear interpolation the
solvers use (the official DPM-Solver code's discrete schedule), so the solvers integrate this
ODE exactly up to their truncation error.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import builders
from jdiff import config_lib
from jdiff import diffusion as diffusion_lib
from jdiff import samplers
from jdiff import sampling
from jdiff import schedules
from jdiff.drivers import evaluate

T = 1000
BETAS = schedules.linear_betas(T)
LOG_ABAR = np.cumsum(np.log1p(-BETAS))
MU = np.array([0.3, -0.2, 0.5, 0.0]).reshape(1, 4)
S2 = np.array([0.25, 0.5, 0.36, 1.0]).reshape(1, 4)
Z = np.linspace(-2.0, 2.0, 8).reshape(2, 4)


def log_alpha(tau):
  return np.interp(tau, np.arange(T, dtype=np.float64), 0.5 * LOG_ABAR)


def eps_model(x, t):
  """The exact eps predictor, jax float32, at real steps t [B]."""
  la = jnp.interp(t, jnp.arange(T, dtype=jnp.float32), jnp.asarray(0.5 * LOG_ABAR, jnp.float32))
  a = jnp.exp(la)[:, None]
  s = jnp.sqrt(1.0 - a * a)
  return s * (x - a * MU) / (a * a * S2 + s * s)


def eps64(x, alpha):
  """The exact eps predictor, float64, at the level alpha."""
  sigma = np.sqrt(1.0 - alpha * alpha)
  return sigma * (x - alpha * MU) / (alpha * alpha * S2 + sigma * sigma)


def exact_flow(x, alpha, alpha_end):
  v, v_end = alpha ** 2 * S2 + 1 - alpha ** 2, alpha_end ** 2 * S2 + 1 - alpha_end ** 2
  return alpha_end * MU + np.sqrt(v_end / v) * (x - alpha * MU)


def start_and_end(plan, final_alpha):
  alpha = float(np.exp(log_alpha(plan.table["t"][0])))
  x = alpha * MU + np.sqrt(alpha ** 2 * S2 + 1 - alpha ** 2) * Z
  return x, exact_flow(x, alpha, final_alpha)


def run(plan, x, model_fn=eps_model):
  return np.asarray(jax.jit(lambda x: sampling.run_plan(plan, model_fn, x, jax.random.key(0)))(
      jnp.asarray(x, jnp.float32)))


# ------------------------------------------------------------------------------------------------
# Float64 transcriptions of the reference loops (written from the references' formulas, in their
# form: they share no code with jdiff/sampling.py).


def official_dpm_solver(x, taus, order, data_prediction, lower_order_final=True):
  """dpm_solver_pytorch DPM_Solver.sample(method='multistep') over the time grid taus (S + 1
  steps): Lu et al. 2022b ("DPM-Solver++") Eq. (9) (first order) and Algorithm 2 (2M); its
  appendix's multistep third order; DPM-Solver (Lu et al. 2022a) Eq. (3.7) and Appendix B for
  the noise-prediction form."""
  steps = len(taus) - 1
  la = log_alpha
  sig = lambda t: np.sqrt(1 - np.exp(2 * la(t)))
  lam = lambda t: la(t) - np.log(sig(t))

  def model(x, t):
    e = eps64(x, np.exp(la(t)))
    return (x - sig(t) * e) / np.exp(la(t)) if data_prediction else e

  def update(x, ms, ts, t, o):
    a_t = np.exp(la(t))
    if o == 1:
      h = lam(t) - lam(ts[-1])
      if data_prediction:  # DPM-Solver++ Eq. (9)
        return sig(t) / sig(ts[-1]) * x - a_t * np.expm1(-h) * ms[-1]
      return np.exp(la(t) - la(ts[-1])) * x - sig(t) * np.expm1(h) * ms[-1]  # DPM-Solver (3.7)
    if o == 2:  # DPM-Solver++ Algorithm 2 / DPM-Solver multistep 2 ('dpmsolver' type)
      (m1, m0), (t1, t0) = ms[-2:], ts[-2:]
      h = lam(t) - lam(t0)
      d = (m0 - m1) / ((lam(t0) - lam(t1)) / h)
      if data_prediction:
        p = np.expm1(-h)
        return sig(t) / sig(t0) * x - a_t * p * m0 - 0.5 * a_t * p * d
      p = np.expm1(h)
      return np.exp(la(t) - la(t0)) * x - sig(t) * p * m0 - 0.5 * sig(t) * p * d
    (m2, m1, m0), (t2, t1, t0) = ms[-3:], ts[-3:]
    h = lam(t) - lam(t0)
    r0, r1 = (lam(t0) - lam(t1)) / h, (lam(t1) - lam(t2)) / h
    d10, d11 = (m0 - m1) / r0, (m1 - m2) / r1
    d1, d2 = d10 + r0 / (r0 + r1) * (d10 - d11), (d10 - d11) / (r0 + r1)
    if data_prediction:
      p1 = np.expm1(-h)
      p2 = p1 / h + 1
      p3 = p2 / h - 0.5
      return sig(t) / sig(t0) * x - a_t * p1 * m0 + a_t * p2 * d1 - a_t * p3 * d2
    p1 = np.expm1(h)
    p2 = p1 / h - 1
    p3 = p2 / h - 0.5
    return np.exp(la(t) - la(t0)) * x - sig(t) * p1 * m0 - sig(t) * p2 * d1 - sig(t) * p3 * d2

  ts, ms = [taus[0]], [model(x, taus[0])]
  for step in range(1, order):
    x = update(x, ms, ts, taus[step], step)
    ts.append(taus[step])
    ms.append(model(x, taus[step]))
  for step in range(order, steps + 1):
    o = min(order, steps + 1 - step) if (lower_order_final and steps < 10) else order
    x = update(x, ms, ts, taus[step], o)
    ts = (ts + [taus[step]])[-order:]
    if step < steps:
      ms = (ms + [model(x, taus[step])])[-order:]
  return x


def _diffusers_alpha_sigma(sigma_d):
  """diffusers' _sigma_to_alpha_sigma_t: sigma_d = sqrt((1 - abar) / abar)."""
  alpha = 1.0 / np.sqrt(sigma_d ** 2 + 1.0)
  return alpha, sigma_d * alpha


def _diffusers_lambda(sigma_d):
  alpha, sigma = _diffusers_alpha_sigma(sigma_d)
  with np.errstate(divide="ignore"):
    return np.log(alpha) - np.log(sigma)


def diffusers_dpm_solver(x, timesteps, order, algorithm="dpmsolver++", lower_order_final=True):
  """DPMSolverMultistepScheduler.step over set_timesteps' timesteps (final_sigmas_type 'zero'
  for dpmsolver++, 'sigma_min' for dpmsolver, solver_type 'midpoint')."""
  abar = np.exp(LOG_ABAR)
  sig_d = np.sqrt((1 - abar) / abar)[timesteps]
  last = 0.0 if algorithm == "dpmsolver++" else np.sqrt((1 - abar[0]) / abar[0])
  sig_d = np.append(sig_d, last)
  n = len(timesteps)
  outputs, lower_order_nums = [None] * order, 0
  for i in range(n):
    final = i == n - 1 and ((lower_order_final and n < 15) or algorithm == "dpmsolver++")
    second = i == n - 2 and lower_order_final and n < 15
    alpha_s, sigma_s = _diffusers_alpha_sigma(sig_d[i])
    eps = eps64(x, alpha_s)
    m = (x - sigma_s * eps) / alpha_s if algorithm == "dpmsolver++" else eps
    outputs = outputs[1:] + [m]
    alpha_t, sigma_t = _diffusers_alpha_sigma(sig_d[i + 1])
    lam = lambda k: _diffusers_lambda(sig_d[k])
    h = lam(i + 1) - lam(i)
    if algorithm == "dpmsolver++":
      lead, scale, phi = sigma_t / sigma_s * x, alpha_t, np.expm1(-h)
    else:
      lead, scale, phi = alpha_t / alpha_s * x, sigma_t, np.expm1(h)
    if order == 1 or lower_order_nums < 1 or final:
      x = lead - scale * phi * outputs[-1]
    elif order == 2 or lower_order_nums < 2 or second:
      m0, m1 = outputs[-1], outputs[-2]
      d0, d1 = m0, (m0 - m1) / ((lam(i) - lam(i - 1)) / h)
      x = lead - scale * phi * d0 - 0.5 * scale * phi * d1
    else:
      m0, m1, m2 = outputs[-1], outputs[-2], outputs[-3]
      r0, r1 = (lam(i) - lam(i - 1)) / h, (lam(i - 1) - lam(i - 2)) / h
      d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
      d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
      d2 = (d1_0 - d1_1) / (r0 + r1)
      if algorithm == "dpmsolver++":
        x = (lead - scale * phi * m0 + scale * (phi / h + 1.0) * d1
             - scale * ((np.expm1(-h) + h) / h ** 2 - 0.5) * d2)
      else:
        x = (lead - scale * phi * m0 - scale * (phi / h - 1.0) * d1
             - scale * ((np.expm1(h) - h) / h ** 2 - 0.5) * d2)
    lower_order_nums = min(lower_order_nums + 1, order)
  return x


def _unipc_b(hh, rks, order, variant):
  """UniPC's B(h) and R, b (Zhao et al. 2023, Algorithm 1-2; b_i = i! phi_{i+1}(hh) / B(h))."""
  b_h = hh if variant == "bh1" else np.expm1(hh)
  h_phi_k, factorial, rows, b = np.expm1(hh) / hh - 1, 1, [], []
  for i in range(1, order + 1):
    rows.append(np.asarray(rks) ** (i - 1))
    b.append(h_phi_k * factorial / b_h)
    factorial *= i + 1
    h_phi_k = h_phi_k / hh - 1 / factorial
  return b_h, np.array(rows), np.array(b)


def diffusers_unipc(x, timesteps, order, variant, lower_order_final=True, zero_final=True):
  """UniPCMultistepScheduler.step (predict_x0, UniC after every step but the first, UniP of
  order min(order, S - i, i + 1)); zero_final=False ends at step 0's level instead."""
  abar = np.exp(LOG_ABAR)
  sig_d = np.sqrt((1 - abar) / abar)[timesteps]
  sig_d = np.append(sig_d, 0.0 if zero_final else np.sqrt((1 - abar[0]) / abar[0]))
  lam = lambda k: _diffusers_lambda(sig_d[k])
  n = len(timesteps)
  outputs, last_sample, this_order, lower_order_nums = [], None, None, 0
  for i in range(n):
    alpha_i, sigma_i = _diffusers_alpha_sigma(sig_d[i])
    m = (x - sigma_i * eps64(x, alpha_i)) / alpha_i
    if i > 0:  # UniC-p (Zhao et al. 2023 Eq. (6)) over the last interval, p = its UniP's order
      alpha_t, sigma_t = alpha_i, sigma_i
      _, sigma_s0 = _diffusers_alpha_sigma(sig_d[i - 1])
      h = lam(i) - lam(i - 1)
      m0 = outputs[-1]
      rks = [(lam(i - (k + 1)) - lam(i - 1)) / h for k in range(1, this_order)] + [1.0]
      d1s = [(outputs[-(k + 1)] - m0) / rks[k - 1] for k in range(1, this_order)]
      b_h, rows, b = _unipc_b(-h, rks, this_order, variant)
      rhos = np.array([0.5]) if this_order == 1 else np.linalg.solve(rows, b)
      corr = sum(r * d for r, d in zip(rhos[:-1], d1s)) if d1s else 0.0
      x = (sigma_t / sigma_s0 * last_sample - alpha_t * np.expm1(-h) * m0
           - alpha_t * b_h * (corr + rhos[-1] * (m - m0)))
    outputs = (outputs + [m])[-order:]
    this_order = min(order, n - i) if lower_order_final else order
    this_order = min(this_order, lower_order_nums + 1)
    last_sample = x
    # UniP-p (Eq. (7)): rhos_p = 1/2 at p = 2.
    alpha_t, sigma_t = _diffusers_alpha_sigma(sig_d[i + 1])
    h = lam(i + 1) - lam(i)
    x_t = sigma_t / sigma_i * x - alpha_t * np.expm1(-h) * m
    if this_order > 1:
      rks = [(lam(i - k) - lam(i)) / h for k in range(1, this_order)] + [1.0]
      d1s = [(outputs[-(k + 1)] - m) / rks[k - 1] for k in range(1, this_order)]
      b_h, rows, b = _unipc_b(-h, rks, this_order, variant)
      rhos = np.array([0.5]) if this_order == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1])
      x_t = x_t - alpha_t * b_h * sum(r * d for r, d in zip(rhos, d1s))
    x = x_t
    lower_order_nums = min(lower_order_nums + 1, order)
  return x


# ------------------------------------------------------------------------------------------------
# Timesteps: diffusers' set_timesteps formulas, computed by hand.


def test_diffusers_timesteps_by_hand():
  """DPMSolverMultistepScheduler / UniPCMultistepScheduler.set_timesteps (T = 1000):
  linspace: round(linspace(0, 999, S + 1))[::-1][:-1] (999 k / 10: 499.5 rounds to even 500);
  leading: arange(S + 1)[::-1][:-1] * (1000 // (S + 1)) (90 at S = 10);
  trailing: round(arange(1000, 0, -1000 / S)) - 1."""
  steps = lambda spacing, num: schedules.solver_steps(LOG_ABAR, num, spacing)
  expected = {
      ("linspace", 10): [999, 899, 799, 699, 599, 500, 400, 300, 200, 100],
      ("leading", 10): [900, 810, 720, 630, 540, 450, 360, 270, 180, 90],
      ("trailing", 10): [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
      # 999 k / 5 = 199.8 k; 1000 // 6 = 166; 1000 / 5 = 200.
      ("linspace", 5): [999, 799, 599, 400, 200],
      ("leading", 5): [830, 664, 498, 332, 166],
      ("trailing", 5): [999, 799, 599, 399, 199],
      # 1000 / 3 = 333.33: 1000, 666.67 -> 667, 333.33 -> 333, then - 1.
      ("trailing", 3): [999, 666, 332],
      ("linspace", 3): [999, 666, 333],  # 999 k / 3 = 333 k exactly
      ("linspace", 4): [999, 749, 500, 250],  # 249.75 k: 749.25, 499.5 (to even: 500), 249.75
  }
  for (spacing, num), values in expected.items():
    got, final = steps(spacing, num)
    np.testing.assert_array_equal(got, values, err_msg=f"{spacing} {num}")
    assert final is None  # the last step goes to sigma = 0
  # The official codes' grids: time_uniform t = linspace(1, 1/T, S + 1), tau = T t - 1.
  got, final = steps("time_uniform", 4)
  np.testing.assert_allclose(np.append(got, final), [999, 749.25, 499.5, 249.75, 0.0])
  got, final = steps("logsnr", 6)
  lam = schedules.solver_lambda(log_alpha(np.append(got, final)))
  np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)  # uniform in lambda
  assert got[0] == pytest.approx(T - 1) and final == pytest.approx(0.0, abs=1e-9)


def test_lower_order_final_rules():
  """The predictor orders per row, as each reference picks them."""
  orders = lambda kind, num, spacing, order: sampling.multistep_plan(
      BETAS, num, kind=kind, spacing=spacing, order=order).table["order"].tolist()
  # Official DPM-Solver: warm-up, then lower orders at the end only below 10 steps.
  assert orders("dpm_solver_pp", 6, "time_uniform", 3) == [1, 2, 3, 3, 2, 1]
  assert orders("dpm_solver_pp", 10, "time_uniform", 3) == [1, 2] + [3] * 8
  # diffusers: below 15 steps lower_order_final (and _second); the step to sigma = 0 is always
  # first order.
  assert orders("dpm_solver_pp", 14, "linspace", 3) == [1, 2] + [3] * 10 + [2, 1]
  assert orders("dpm_solver_pp", 20, "linspace", 3) == [1, 2] + [3] * 17 + [1]
  assert orders("dpm_solver", 20, "linspace", 2) == [1] + [2] * 19  # ends at sigma_min
  # UniPC: always min(order, S - i).
  assert orders("unipc", 20, "trailing", 3) == [1, 2] + [3] * 16 + [2, 1]
  assert orders("unipc", 20, "time_uniform", 2) == [1] + [2] * 18 + [1]


# ------------------------------------------------------------------------------------------------
# Against the reference loops, step for step


@pytest.mark.parametrize("kind,order,spacing,num", [
    ("dpm_solver_pp", 2, "time_uniform", 20), ("dpm_solver_pp", 3, "time_uniform", 8),
    ("dpm_solver_pp", 3, "logsnr", 12), ("dpm_solver", 2, "time_uniform", 15),
    ("dpm_solver", 3, "time_quadratic", 7),
])
def test_official_dpm_solver_loop(kind, order, spacing, num):
  plan = sampling.multistep_plan(BETAS, num, kind=kind, spacing=spacing, order=order)
  steps, final = schedules.solver_steps(LOG_ABAR, num, spacing)
  x, _ = start_and_end(plan, 1.0)
  expected = official_dpm_solver(x, np.append(steps, final), order, kind == "dpm_solver_pp")
  np.testing.assert_allclose(run(plan, x), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind,order,spacing,num", [
    ("dpm_solver_pp", 2, "linspace", 10), ("dpm_solver_pp", 2, "trailing", 25),
    ("dpm_solver_pp", 3, "leading", 12), ("dpm_solver_pp", 3, "linspace", 20),
    ("dpm_solver", 2, "linspace", 10), ("dpm_solver", 3, "trailing", 20),
])
def test_diffusers_dpm_solver_step_for_step(kind, order, spacing, num):
  plan = sampling.multistep_plan(BETAS, num, kind=kind, spacing=spacing, order=order)
  timesteps = plan.table["t"].astype(np.int64)
  x, _ = start_and_end(plan, 1.0)
  algorithm = "dpmsolver++" if kind == "dpm_solver_pp" else "dpmsolver"
  expected = diffusers_dpm_solver(x, timesteps, order, algorithm)
  np.testing.assert_allclose(run(plan, x), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("variant,order,spacing,num", [
    ("bh1", 2, "linspace", 10), ("bh2", 2, "trailing", 20), ("bh2", 3, "leading", 12),
    ("bh1", 3, "linspace", 25), ("bh2", 1, "linspace", 6),
])
def test_diffusers_unipc_step_for_step(variant, order, spacing, num):
  plan = sampling.multistep_plan(BETAS, num, kind="unipc", spacing=spacing, order=order,
                                 variant=variant)
  x, _ = start_and_end(plan, 1.0)
  expected = diffusers_unipc(x, plan.table["t"].astype(np.int64), order, variant)
  np.testing.assert_allclose(run(plan, x), expected, rtol=2e-5, atol=2e-5)


def _trajectory(plan, x):
  """The sample after every row (one scan)."""
  def body(carry, row):
    carry = plan.step(eps_model, carry, row, jax.random.key(0))
    return carry, plan.final(carry)
  table = {k: jnp.asarray(v) for k, v in plan.table.items()}
  _, xs = jax.jit(lambda x: jax.lax.scan(body, plan.init(x), table))(jnp.asarray(x, jnp.float32))
  return np.asarray(xs)


def test_diffusers_fixture_step_for_step():
  """diffusers 0.42.1's own schedulers (tests/fixtures/solvers, made by
  jdiff/tools/make_reference_fixtures_solvers.py): the same timesteps and the same sample after
  every step. UniPC bh1's last step to sigma = 0 is NaN in diffusers (B(h) = h = -inf times a
  zero residual); jdiff takes its limit, the x0 prediction, like bh2."""
  path = os.path.join(os.path.dirname(__file__), "fixtures", "solvers", "diffusers_solvers.json")
  with open(path) as f:
    fixture = json.load(f)
  np.testing.assert_array_equal(fixture["mu"], MU[0])
  np.testing.assert_array_equal(fixture["s2"], S2[0])
  for case in fixture["cases"]:
    kind = ("unipc" if case["scheduler"] == "unipc" else
            "dpm_solver_pp" if case["variant"] == "dpmsolver++" else "dpm_solver")
    plan = sampling.multistep_plan(BETAS, case["steps"], kind=kind, spacing=case["spacing"],
                                   order=case["order"], variant=case["variant"]
                                   if kind == "unipc" else "bh1")
    name = f"{kind} {case['variant']} {case['order']} {case['spacing']} {case['steps']}"
    np.testing.assert_array_equal(plan.table["t"], case["timesteps"], err_msg=name)
    got = _trajectory(plan, np.asarray(case["start"]))
    expected = np.asarray(case["trajectory"])
    if case["variant"] == "bh1":
      assert np.all(np.isnan(expected[-1])), name
      got, expected = got[:-1], expected[:-1]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)  # measured <= 1.5e-6


def test_official_unipc_is_the_same_loop_on_its_grid():
  """The official UniPC sample() (predictor, model at the predicted x, corrector of the same
  order; no corrector after the last step; lower_order_final min(order, S + 1 - step)) is
  diffusers' loop on another grid: at integer steps ending at step 0's level they agree."""
  plan = sampling.solver_plan(BETAS, np.arange(999, 0, -111.0), 0.0, kind="unipc", order=3,
                              variant="bh2", lower_order_final_below=np.inf)
  x, _ = start_and_end(plan, 1.0)
  expected = diffusers_unipc(x, plan.table["t"].astype(np.int64), 3, "bh2", zero_final=False)
  np.testing.assert_allclose(run(plan, x), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind,variant", [("dpm_solver_pp", ""), ("dpm_solver", ""),
                                          ("unipc", "bh1"), ("unipc", "bh2")])
def test_single_updates_equal_the_paper_formulas_on_random_inputs(kind, variant):
  """Each row's update, applied by the scan step to random x and random previous outputs,
  against the formulas of the papers (transcribed in the reference loops above; the model is a
  stub returning a random output)."""
  rng = np.random.default_rng(0)
  plan = sampling.multistep_plan(BETAS, 9, kind=kind, spacing="logsnr", order=3,
                                 variant=variant or "bh1")
  table = plan.table
  lam_grid = schedules.solver_lambda(log_alpha(np.append(table["t"], 0.0)))
  alpha = np.exp(log_alpha(np.append(table["t"], 0.0)))
  sigma = np.sqrt(1 - alpha ** 2)
  history = table["p_hist"].shape[1]
  for i in range(len(table["t"])):
    x = rng.normal(size=(2, 4))
    last = rng.normal(size=(2, 4))
    hist = rng.normal(size=(history, 2, 4))
    m_new = rng.normal(size=(2, 4))
    # A stub model whose output converts to m_new (x0 or eps) at this row's level.
    a_i, s_i = table["sqrt_a"][i], table["sqrt_1ma"][i]
    eps_out = (x - a_i * m_new) / s_i if kind != "dpm_solver" else m_new
    row = {k: jnp.asarray(v[i]) for k, v in table.items()}
    carry = {"x": jnp.asarray(x, jnp.float32), "hist": jnp.asarray(hist, jnp.float32)}
    if kind == "unipc":
      carry["x_last"] = jnp.asarray(last, jnp.float32)
    out = plan.step(lambda x_, t_: jnp.asarray(eps_out, jnp.float32), carry, row, None)
    ms = [m_new] + list(hist)
    lams = [lam_grid[max(i - k, 0)] for k in range(3)]
    o = int(table["order"][i])
    if kind == "unipc":
      x_c = x
      if i > 0:  # UniC over (i - 1, i), order of row i - 1's predictor
        p = int(table["order"][i - 1])
        h = lam_grid[i] - lam_grid[i - 1]
        rks = [(lam_grid[i - 1 - k] - lam_grid[i - 1]) / h for k in range(1, p)] + [1.0]
        b_h, rows, b = _unipc_b(-h, rks, p, variant)
        rhos = np.array([0.5]) if p == 1 else np.linalg.solve(rows, b)
        d1s = [(hist[k] - hist[0]) / rks[k - 1] for k in range(1, p)]
        x_c = (sigma[i] / sigma[i - 1] * last - alpha[i] * np.expm1(-h) * hist[0]
               - alpha[i] * b_h * (sum(r * d for r, d in zip(rhos[:-1], d1s))
                                   + rhos[-1] * (m_new - hist[0])))
      np.testing.assert_allclose(out["x_last"], x_c, rtol=1e-4, atol=1e-4)
      h = lam_grid[i + 1] - lams[0]
      expected = sigma[i + 1] / sigma[i] * x_c - alpha[i + 1] * np.expm1(-h) * m_new
      if o > 1:
        rks = [(lams[k] - lams[0]) / h for k in range(1, o)] + [1.0]
        b_h, rows, b = _unipc_b(-h, rks, o, variant)
        rhos = np.array([0.5]) if o == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1])
        expected = expected - alpha[i + 1] * b_h * sum(
            r * (ms[k] - m_new) / rks[k - 1] for k, r in enumerate(rhos, start=1))
    else:
      expected = _dpm_formula(x, ms, lams, lam_grid[i + 1], alpha[i], alpha[i + 1], sigma[i],
                              sigma[i + 1], o, kind == "dpm_solver_pp")
    np.testing.assert_allclose(out["x"], expected, rtol=1e-4, atol=1e-4, err_msg=f"row {i}")
    np.testing.assert_allclose(out["hist"][0], m_new, rtol=1e-5, atol=1e-5)


def _dpm_formula(x, ms, lams, lam_t, a_s, a_t, s_s, s_t, order, data_prediction):
  """DPM-Solver++ Eq. (9) / Algorithm 2 / 3M; DPM-Solver Eq. (3.7) / Appendix B multistep."""
  h = lam_t - lams[0]
  if data_prediction:
    lead, scale, p1 = s_t / s_s * x, a_t, np.expm1(-h)
    p2 = p1 / h + 1
    sign = 1.0
  else:
    lead, scale, p1 = a_t / a_s * x, s_t, np.expm1(h)
    p2 = p1 / h - 1
    sign = -1.0
  out = lead - scale * p1 * ms[0]
  if order == 1:
    return out
  r0 = (lams[0] - lams[1]) / h
  if order == 2:
    return out - 0.5 * scale * p1 * (ms[0] - ms[1]) / r0
  r1 = (lams[1] - lams[2]) / h
  d10, d11 = (ms[0] - ms[1]) / r0, (ms[1] - ms[2]) / r1
  d1, d2 = d10 + r0 / (r0 + r1) * (d10 - d11), (d10 - d11) / (r0 + r1)
  return out + sign * scale * p2 * d1 - scale * (p2 / h - 0.5) * d2


# ------------------------------------------------------------------------------------------------
# Convergence on the closed-form model


def _errors(kind, order, spacing, nums, variant="bh1", lower_order_final=False):
  errors = []
  for num in nums:
    plan = sampling.multistep_plan(BETAS, num, kind=kind, spacing=spacing, order=order,
                                   variant=variant, lower_order_final=lower_order_final)
    _, final = schedules.solver_steps(LOG_ABAR, num, spacing)
    if kind == "dpm_solver" and final is None:
      final = 0.0  # diffusers' sigma_min end (sampling.multistep_plan)
    x, exact = start_and_end(plan, 1.0 if final is None else float(np.exp(log_alpha(final))))
    errors.append(float(np.max(np.abs(run(plan, x) - exact))))
  return np.array(errors)


def _slope(nums, errors):
  return -np.polyfit(np.log(nums), np.log(errors), 1)[0]


# Measured on this model (float32, max error over 8 values; see docs/methods/samplers.md):
# the slope of log(error) against log(S). 2M: 2. UniPC-2 (UniP-2 + UniC): 3, one more than its
# predictor (Zhao et al. 2023, Theorem 3.3). DPM-Solver++ 3M: 3 on time-uniform steps at S =
# 64..256; its first-order warm-up step (both references start so) makes the asymptotic order 2,
# visible on logSNR-uniform steps, where the first step is as long as the others.
@pytest.mark.parametrize("kind,order,variant,spacing,nums,low,high", [
    ("dpm_solver_pp", 2, "", "logsnr", (32, 64, 128), 1.85, 2.15),
    ("dpm_solver", 2, "", "logsnr", (32, 64, 128), 1.85, 2.15),
    ("dpm_solver_pp", 3, "", "time_uniform", (64, 128, 256), 2.6, 3.3),
    ("unipc", 2, "bh1", "logsnr", (16, 32, 64), 2.7, 3.3),
    ("unipc", 2, "bh2", "logsnr", (16, 32, 64), 2.7, 3.3),
])
def test_error_falls_at_the_solver_order(kind, order, variant, spacing, nums, low, high):
  errors = _errors(kind, order, spacing, nums, variant or "bh1")
  slope = _slope(nums, errors)
  assert low < slope < high, (kind, order, variant, errors, slope)


def test_second_order_beats_ddim_at_equal_cost():
  """At S = 20 logSNR-uniform steps DPM-Solver++ 2M and UniPC are over 4x closer to the exact
  ODE map than first order (order=1 is DDIM, Lu et al. 2022b Eq. (9)). (On time-uniform steps at
  S <= 10 this model's last interval, from step ~100 to 0, is 3.5 long in lambda and the
  2M extrapolation there is worse than DDIM: measured 0.59 against 0.34 at S = 10.)"""
  first = _errors("dpm_solver_pp", 1, "logsnr", (20,), lower_order_final=True)[0]
  for kind, variant in (("dpm_solver_pp", "bh1"), ("unipc", "bh1"), ("unipc", "bh2")):
    second = _errors(kind, 2, "logsnr", (20,), variant, lower_order_final=True)[0]
    assert second < 0.25 * first, (kind, variant, first, second)


def test_first_order_is_ddim():
  """DPM-Solver-1 = DPM-Solver++-1 = DDIM (Lu et al. 2022a Eq. (3.7), 2022b Eq. (9)) on the
  same integer steps: to sigma = 0 (data prediction), and down to step 0's level (both)."""
  steps = schedules.step_schedule(T, 10, "uniform")
  ddim = sampling.ddim_plan(BETAS, steps, eta=0.0)
  x, _ = start_and_end(ddim, 1.0)
  solver = sampling.solver_plan(BETAS, steps[::-1].astype(np.float64), None,
                                kind="dpm_solver_pp", order=1)
  np.testing.assert_allclose(run(solver, x), run(ddim, x), rtol=1e-5, atol=1e-5)
  head = {k: v[:-1] for k, v in ddim.table.items()}
  to_step0 = np.asarray(sampling.run_step_table(
      lambda x, row: ddim.step(eps_model, x, row, jax.random.key(0)),
      jnp.asarray(x, jnp.float32), head))
  for kind in ("dpm_solver", "dpm_solver_pp"):
    solver = sampling.solver_plan(BETAS, steps[:0:-1].astype(np.float64), 0.0, kind=kind,
                                  order=1)
    np.testing.assert_allclose(run(solver, x), to_step0, rtol=1e-5, atol=1e-5, err_msg=kind)
  with pytest.raises(ValueError, match="noise prediction"):
    sampling.solver_plan(BETAS, steps[::-1].astype(np.float64), None, kind="dpm_solver")


# ------------------------------------------------------------------------------------------------
# Plans: one scan, adaptive depth, surrogate starts


def test_one_scan_and_depth_per_step():
  depth_schedule = np.arange(T) * 3 // T
  plan = sampling.multistep_plan(BETAS, 10, kind="unipc", spacing="time_uniform", order=3,
                                 variant="bh2", depth_schedule=depth_schedule)
  np.testing.assert_array_equal(plan.table["depth"],
                                depth_schedule[np.floor(plan.table["t"]).astype(int)])
  seen = []

  def model_fn(x, t, depth):
    seen.append(depth)
    return eps_model(x, t)

  jaxpr = jax.make_jaxpr(lambda x: sampling.run_plan(plan, model_fn, x, jax.random.key(0)))(
      jnp.zeros((2, 4)))
  assert [e.primitive.name for e in jaxpr.eqns].count("scan") == 1
  assert len(seen) == 1  # traced once, inside the one scan, with a traced depth
  x, _ = start_and_end(plan, 1.0)
  plain = sampling.multistep_plan(BETAS, 10, kind="unipc", spacing="time_uniform", order=3,
                                  variant="bh2")
  np.testing.assert_allclose(run(plan, x, lambda x, t, depth=None: eps_model(x, t)),
                             run(plain, x), rtol=1e-6)


def test_rows_up_to_restarts_the_history():
  """A surrogate start part-way down: the kept rows start again at first order (the history
  before them is not there) and equal the solver run on those steps alone."""
  plan = sampling.multistep_plan(BETAS, 10, kind="dpm_solver_pp", spacing="time_uniform",
                                 order=3)
  rest = plan.rows_up_to(500)
  assert rest.num_evaluations == 5 and rest.table["order"].tolist()[:3] == [1, 2, 3]
  alone = sampling.solver_plan(BETAS, plan.table["t"][5:].astype(np.float64), 0.0,
                               kind="dpm_solver_pp", order=3)
  for key in ("p_x", "p_new", "p_hist"):
    np.testing.assert_allclose(rest.table[key], alone.table[key], rtol=1e-6, atol=1e-7)
  model_fn = eps_model
  x0 = jnp.asarray(np.tile(MU, (2, 1)), jnp.float32)
  out = sampling.surrogate_sample(plan, model_fn, lambda key: x0, 501, T, jnp.zeros((2, 4)),
                                  jax.random.key(0))
  assert out.shape == (2, 4) and np.all(np.isfinite(np.asarray(out)))
  # A prefix keeps its coefficients (run_plan_to_x0, the low-resolution surrogate's stop).
  head = plan.rows_down_to(500)
  np.testing.assert_array_equal(head.table["p_hist"], plan.table["p_hist"][:5])


# ------------------------------------------------------------------------------------------------
# The registry: config, builders, names


def _config(**sampling_fields):
  config = config_lib.default_config()
  config.diffusion.num_timesteps = T
  config.sampling.update(sampling_fields)
  return config


def test_defaults_are_the_official_codes_recommendation():
  """dpm_solver_pp with nothing else said: DPM-Solver++ 2M, time-uniform steps, lower-order
  final, no x0 clipping, ending at step 0's level (dpm_solver_pytorch's sample() defaults)."""
  config = _config(name="dpm_solver_pp", steps=20)
  config_lib.validate(config)
  diffusion = diffusion_lib.GaussianDiffusion.from_betas(BETAS)
  plan = builders.build_plan(config, diffusion)
  reference = sampling.multistep_plan(BETAS, 20, kind="dpm_solver_pp", spacing="time_uniform",
                                      order=2, lower_order_final=True, clip_denoised=False)
  for key, value in reference.table.items():
    np.testing.assert_array_equal(plan.table[key], value, err_msg=key)
  assert not builders.clip_x0(config)
  assert samplers.get("unipc").clip_x0 is False
  assert config.sampling.unipc_variant == "bh1" and config.sampling.order == 2


@pytest.mark.parametrize("fields,message", [
    (dict(name="dpm_solver_pp", schedule="quadratic"), "config.sampling.schedule='quadratic'"),
    (dict(name="unipc", schedule="uniform"), "config.sampling.schedule='uniform'"),
    (dict(name="dpm_solver_pp", order=4), "config.sampling.order=4"),
    (dict(name="unipc", unipc_variant="bh3"), "config.sampling.unipc_variant='bh3'"),
    (dict(name="dpm_solver_pp", order=3, steps=2), "config.sampling.steps=2"),
    (dict(name="ddim", schedule="logsnr"), "config.sampling.schedule='logsnr'"),
])
def test_solver_config_values_are_validated(fields, message):
  with pytest.raises(config_lib.ConfigError, match="^" + message.replace("(", r"\(")):
    config_lib.validate(_config(**fields))


def test_every_registered_sampler_builds_and_is_named_apart():
  diffusion = diffusion_lib.GaussianDiffusion.from_betas(BETAS)
  names, curves = set(), set()
  for name in samplers.names():
    config = _config(name=name, steps=10)
    config_lib.validate(config)
    plan = builders.build_plan(config, diffusion)
    names.add(evaluate.default_name(config, plan.num_evaluations))
    curves.add(evaluate.curve_name(config))
  assert len(names) == len(curves) == len(samplers.names())
  assert {"dpm_solver_pp", "dpm_solver", "unipc"} <= set(samplers.names())
  config = _config(name="unipc", steps=10, unipc_variant="bh2", schedule="trailing")
  assert evaluate.default_name(config, 10) == "unipc-bh2-2o10_trailing"
  assert evaluate.curve_name(config) == "UniPC bh2 order 2 trailing"


def test_a_new_sampler_is_one_registration():
  """Registering a sampler makes it a config choice, buildable, named by evaluate and listed
  by the bench and the sampler table, with nothing else changed."""
  from jdiff.tools import bench_samplers  # pylint: disable=g-import-not-at-top
  from jdiff.tools import paper_tables  # pylint: disable=g-import-not-at-top
  record = samplers.Sampler(
      name="ddim_eta_half", title="DDIM eta=1/2",
      plan=lambda s, c: sampling.ddim_plan(
          c.betas, schedules.step_schedule(c.num_timesteps, c.steps, "uniform"), eta=0.5,
          **c.common),
      label=lambda s, evaluations: f"ddimhalf{s.steps}", curve=lambda s: "DDIM eta=1/2",
      fields=("steps",), min_steps=2,
      bench=lambda config: [("DDIM-1/2-10", dict(name="ddim_eta_half", steps=10))],
      table_rows=lambda config, steps, settings: [
          (f"ddimhalf{steps}", "DDIM eta=1/2", dict(name="ddim_eta_half", steps=steps))])
  samplers.register(record)
  try:
    config = _config(name="ddim_eta_half", steps=10)
    config_lib.validate(config)
    plan = builders.build_plan(config, diffusion_lib.GaussianDiffusion.from_betas(BETAS))
    assert plan.num_evaluations == 10 and np.all(plan.table["sigma"][:-1] > 0)
    assert evaluate.default_name(config, 10) == "ddimhalf10"
    assert evaluate.curve_name(config) == "DDIM eta=1/2"
    assert "ddim_eta_half" in samplers.bench_families()
    assert ("ddim_eta_half", "DDIM-1/2-10") in [spec[:2] for spec in bench_samplers._specs(config)]
    rows = paper_tables.sampler_rows(config, dict(paper_tables.DEFAULT_SETTINGS, steps=(10,)))
    assert "ddimhalf10" in [row.name for row in rows]
    with pytest.raises(ValueError, match="registered twice"):
      samplers.register(record)
  finally:
    del samplers.REGISTRY["ddim_eta_half"]
  with pytest.raises(config_lib.ConfigError, match="config.sampling.name='ddim_eta_half'"):
    config_lib.validate(_config(name="ddim_eta_half"))


def test_sampler_record_fields_are_known_config_fields():
  config = config_lib.default_config()
  for sampler in samplers.REGISTRY.values():
    assert set(sampler.fields) <= set(config.sampling), sampler.name
    assert dataclasses.is_dataclass(sampler)
