"""Surrogate diffusion end to end on tiny configs (Algorithm 4): a low-resolution DDPM surrogate
(DDPM-16's analogue: the 4x4 digits) runs its own chain from T down to t_mid and hands its x0
estimate over; an SNGAN surrogate is one generator pass. Both load from trained workdirs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from jdiff import builders
from jdiff import config_lib
from jdiff import parallel
from jdiff import sampling
from jdiff import surrogate as surrogate_lib
from jdiff.drivers import gan_train
from jdiff.drivers import sample as sample_lib
from jdiff.drivers import train as train_lib
from jdiff.tools import bench_samplers

T = 20  # the tiny variant's chain
LOW_RES = os.path.join(REPO, "configs", "quickstart_ddpm4.py") + ":tiny"
GAN = os.path.join(REPO, "configs", "quickstart_gan.py") + ":tiny"


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  """Trained tiny workdirs: the 8x8 diffusion model, the 4x4 DDPM surrogate, the SNGAN."""
  root = tmp_path_factory.mktemp("surrogate")
  paths = {name: str(root / name) for name in ("main", "low_res", "gan")}
  train_lib.train(config_lib.load_config(os.path.join(REPO, "configs", "quickstart.py:tiny")),
                  paths["main"])
  train_lib.train(config_lib.load_config(LOW_RES), paths["low_res"])
  gan_train.train(config_lib.load_config(GAN), paths["gan"])
  return paths


def _config(kind, surrogate_config, surrogate_workdir, t_mid):
  config = config_lib.load_config(os.path.join(REPO, "configs", "quickstart.py:tiny"))
  config.surrogate.update(dict(kind=kind, config=surrogate_config, workdir=surrogate_workdir,
                               t_mid=t_mid))
  config_lib.validate(config)
  return config


def test_low_resolution_ddpm_runs_t_to_t_mid_and_hands_over_its_x0_estimate(workdirs):
  t_mid = 12
  config = _config("ddpm", LOW_RES, workdirs["low_res"], t_mid)
  mesh = parallel.make_mesh()
  surrogate_fn, evaluations = surrogate_lib.load_surrogate(config, mesh)(t_mid)
  # Rows T..t_mid+1 bring it to x_{t_mid}; one more evaluation there gives its x0 estimate.
  assert evaluations == T - t_mid + 1

  # The same hand-off written out from the surrogate's own model, step by step.
  low_config = config_lib.load_config(LOW_RES)
  model = builders.build_model(low_config)
  params, _ = builders.restore_ema_params(low_config, workdirs["low_res"], model, mesh)
  diffusion = builders.build_diffusion(low_config)
  model_fn = builders.make_model_fn(model, params)
  key = jax.random.key(7)
  noise_key, sampler_key = jax.random.split(key)
  x = jax.random.normal(noise_key, (4, 4, 4, 1))
  plan = sampling.ancestral_plan(diffusion)
  for row in range(T - t_mid):  # 0-based steps 19..12 (1-based 20..13)
    x = plan.step(model_fn, x, {k: jnp.asarray(v[row]) for k, v in plan.table.items()},
                  sampler_key)
  t = jnp.full((4,), t_mid - 1)
  eps = model_fn(x, t.astype(jnp.float32))
  abar = diffusion.alphas_cumprod[t_mid - 1]
  x0 = jnp.clip((x - jnp.sqrt(1 - abar) * eps) / jnp.sqrt(abar), -1, 1)
  expected = jax.image.resize(x0, (4, 8, 8, 1), "bilinear")
  np.testing.assert_allclose(jax.jit(surrogate_fn, static_argnums=1)(key, 4), expected,
                             atol=1e-5)

  # At t_mid = 0 the surrogate runs its whole chain; at T it is not run at all.
  assert surrogate_lib.load_surrogate(config, mesh)(0)[1] == T
  assert surrogate_lib.load_surrogate(config, mesh)(T)[1] == 0


@pytest.mark.slow
def test_surrogate_sampling_and_bench_report_both_models_costs(workdirs, tmp_path):
  """--mode=sample's generator and the sampler bench with the DDPM surrogate (Table 4.5's rows)."""
  config = _config("ddpm", LOW_RES, workdirs["low_res"], 10)
  generator = sample_lib.build_generator(config, workdirs["main"], parallel.make_mesh())
  assert (generator.network_evaluations, generator.surrogate_evaluations) == (10, T - 10 + 1)
  images = generator.sample(0)
  assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8

  config.surrogate.t_mids = (0, 10, T)
  config.bench.samplers = ("surrogate",)
  bench_workdir = tmp_path / "bench"
  bench_workdir.mkdir()
  for item in os.listdir(workdirs["main"]):  # the main model's checkpoints, read only
    os.symlink(os.path.join(workdirs["main"], item), bench_workdir / item)
  bench_samplers.run(config, str(bench_workdir))
  with open(bench_workdir / "bench_samplers.json") as f:
    rows = {row.get("t_mid"): row for row in json.load(f)["rows"]}
  assert rows[None]["network_evaluations"] == T  # DDPM-T, the unit of cost
  assert [(rows[t]["network_evaluations"], rows[t]["surrogate_network_evaluations"])
          for t in (0, 10, T)] == [(0, T), (10, T - 10 + 1), (T, 0)]
  assert all(row["full_resolution_steps"] > 0 for row in rows.values())


def test_sngan_surrogate_is_one_generator_pass(workdirs):
  t_mid = 8
  config = _config("sngan", GAN, workdirs["gan"], t_mid)
  generator = sample_lib.build_generator(config, workdirs["main"], parallel.make_mesh())
  assert (generator.network_evaluations, generator.surrogate_evaluations) == (t_mid, 1)
  images = generator.sample(0)
  assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8
  assert generator.seconds_per_evaluation(repeats=1) > 0  # the unit of metrics.json's cost


def test_surrogate_with_another_chain_length_is_refused(workdirs):
  config = _config("ddpm", os.path.join(REPO, "configs", "quickstart_ddpm4.py"), workdirs["low_res"],
                   10)
  with pytest.raises(config_lib.ConfigError, match="diffusion.num_timesteps=1000 must equal"):
    surrogate_lib.load_surrogate(config, parallel.make_mesh())
