"""Adaptive depth: shortcut U-Net, k(t), bucketed training draws, dispatch without recompiling."""

import contextlib
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import builders
from jdiff import compute
from jdiff import depth
from jdiff import parallel
from jdiff import sampling
from jdiff.drivers import train as train_lib
from jdiff.models.unet import SKIP_TYPES, UNet

from conftest import tiny_config

NUM_LEVELS = 3  # resolutions 8, 4, 2
IMAGE = (8, 8, 1)


def tiny_unet(skip_type="zero"):
  # No attention: the shortcut logic does not depend on it, and it keeps compiles short.
  return UNet(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
              out_ch=1, num_groups=4, skip_type=skip_type)


def inputs(batch=2):
  x = jax.random.normal(jax.random.key(1), (batch,) + IMAGE)
  return x, jnp.array([3.0, 700.0][:batch])


@functools.lru_cache(maxsize=None)
def random_params(model):
  """Params with every leaf randomised: at init the zero-initialised output convs would hide
  which levels contribute. Cached per model (modules are hashable), jitted for speed."""
  x, t = inputs()

  @functools.partial(compute.for_backend().jit, run_once=True)
  def make():
    params = model.init(jax.random.key(0), x, t, method=UNet.init_all_depths)["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(treedef, [leaf + 0.2 * jax.random.normal(key, leaf.shape)
                                        for leaf, key in zip(leaves, keys)])
  return make()


def skipped_modules(params, skip_type, shortcut_depth):
  """Top-level module names that depth k must not use: levels below the last active one, the
  middle block (except on the interpolate path), and the other levels' interpolate paths."""
  last_level = NUM_LEVELS - 1 - shortcut_depth
  skipped = set()
  for name in params:
    parts = name.split("_")
    if parts[0] in ("down", "up") and int(parts[1]) > last_level:
      skipped.add(name)
    elif name == f"down_{last_level}_downsample":
      skipped.add(name)
    elif parts[0] == "mid" and skip_type != "interpolate":
      skipped.add(name)
    elif parts[0] == "interp" and int(parts[2]) != last_level:
      skipped.add(name)
  return skipped


def apply_fn(model, params):
  return lambda x, t, shortcut_depth: model.apply({"params": params}, x, t,
                                                  shortcut_depth=shortcut_depth)


@contextlib.contextmanager
def count_compiles():
  """Counts XLA backend compilations while the block runs."""
  events = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_depth_zero_through_switch_equals_full_network():
  model = tiny_unet()
  params = random_params(model)
  x, t = inputs()
  static_depth = jax.jit(lambda k: model.apply({"params": params}, x, t, shortcut_depth=k),
                         static_argnums=0)
  full = static_depth(0)
  dispatch = jax.jit(lambda d: depth.apply_at_depth(apply_fn(model, params), NUM_LEVELS, d, x, t))
  np.testing.assert_allclose(dispatch(jnp.int32(0)), full, rtol=1e-5, atol=1e-5)
  # Every traced k runs the same computation as that static depth.
  for k in range(1, NUM_LEVELS):
    static = static_depth(k)
    np.testing.assert_allclose(dispatch(jnp.int32(k)), static, rtol=1e-5, atol=1e-5)
    assert not np.allclose(static, full, atol=1e-3)


@pytest.mark.parametrize("skip_type", SKIP_TYPES)
def test_skipped_levels_do_not_affect_output(skip_type):
  model = tiny_unet(skip_type)
  params = random_params(model)
  x, t = inputs()
  forward = jax.jit(lambda p, k: model.apply({"params": p}, x, t, shortcut_depth=k),
                    static_argnums=1)
  for k in range(1, NUM_LEVELS):
    out = forward(params, k)
    assert out.shape == (2,) + IMAGE
    skipped = skipped_modules(params, skip_type, k)
    assert any(name.startswith("up_") for name in skipped)
    perturbed = {name: jax.tree.map(lambda p: p + 1.0, sub) if name in skipped else sub
                 for name, sub in params.items()}
    np.testing.assert_array_equal(forward(perturbed, k), out)
    # The same perturbation of an active level does change the output.
    active = dict(params, up_0_res_0=jax.tree.map(lambda p: p + 1.0, params["up_0_res_0"]))
    assert not np.allclose(forward(active, k), out)


@pytest.mark.parametrize("skip_type", SKIP_TYPES)
def test_gradients_reach_only_active_levels(skip_type):
  model = tiny_unet(skip_type)
  params = random_params(model)
  x, t = inputs()

  @jax.jit
  def grads(params, k):
    loss = lambda p: jnp.sum(depth.apply_at_depth(apply_fn(model, p), NUM_LEVELS, k, x, t) ** 2)
    return jax.grad(loss)(params)

  for k in range(NUM_LEVELS):
    g = grads(params, jnp.int32(k))
    skipped = skipped_modules(params, skip_type, k) if k else {
        name for name in params if name.startswith("interp")}
    for name, sub in g.items():
      norm = float(sum(jnp.sum(jnp.abs(leaf)) for leaf in jax.tree.leaves(sub)))
      if name in skipped:
        assert norm == 0.0, (k, name)
      else:
        assert norm > 0.0, (k, name)


@pytest.mark.parametrize("num_levels,power,num_timesteps,expected", [
    # t = s/T; k = min(N-1, floor(N - N (1 - t)^c)), worked out by hand.
    (3, 1, 10, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]),        # 3t = 0, .3, ..., 2.7
    (2, 1, 4, [0, 0, 1, 1]),                           # 2t = 0, .5, 1 (exact boundary), 1.5
    (4, 2, 4, [0, 1, 3, 3]),                           # 4 - 4(1-t)^2 = 0, 1.75, 3, 3.75
    (3, 2, 6, [0, 0, 1, 2, 2, 2]),                     # 0, .92, 1.67, 2.25, 2.67, 2.92
    (4, 5, 5, [0, 2, 3, 3, 3]),                        # 0, 2.69, 3.69, 3.96, 3.999
    (4, 0, 5, [0, 0, 0, 0, 0]),                        # c = 0: the full network
    (4, 1, 12, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]),  # 4t = s/3
])
def test_depth_schedule_hand_computed(num_levels, power, num_timesteps, expected):
  np.testing.assert_array_equal(depth.depth_schedule(num_levels, power, num_timesteps), expected)


def test_config_depth_power_reaches_the_sampler_plan():
  config = tiny_config()
  config.model.ch_mult = (1, 2, 2, 2)
  config.diffusion.num_timesteps = 4
  diffusion = builders.build_diffusion(config)
  assert "depth" not in builders.build_plan(config, diffusion, name="ancestral").table  # c = 0
  config.depth.power = 2.0
  table = builders.build_plan(config, diffusion, name="ancestral").table
  expected = {0: 0, 1: 1, 2: 3, 3: 3}  # the (4, 2, 4) case above
  np.testing.assert_array_equal(table["depth"], [expected[int(t)] for t in table["t"]])


def test_bucketed_batches_share_one_depth_and_t_is_uniform():
  num_timesteps, batch, num_batches, power = 20, 8, 4000, 2.0
  schedule = depth.depth_schedule(NUM_LEVELS, power, num_timesteps)
  draw = jax.jit(jax.vmap(lambda rng: depth.sample_depth_and_timesteps(
      rng, "bucketed", batch, NUM_LEVELS, power, num_timesteps)))
  depths, t = jax.device_get(draw(jax.random.split(jax.random.key(0), num_batches)))
  np.testing.assert_array_equal(schedule[t], np.repeat(depths[:, None], batch, axis=1))
  # Examples of one batch share a bucket, so they are not independent draws; one example per
  # batch is: its t must be uniform over all T steps, and the buckets drawn by their sizes.
  for observed, probabilities, quantile in [
      (t[:, 0], np.full(num_timesteps, 1 / num_timesteps), 43.8),  # 99.9% of chi2(19)
      (depths, np.bincount(schedule) / num_timesteps, 13.8)]:         # 99.9% of chi2(2)
    counts = np.bincount(observed, minlength=len(probabilities))
    expected = num_batches * probabilities
    assert np.sum((counts - expected) ** 2 / expected) < quantile


def test_random_scheme_draws_every_depth_uniformly():
  num_batches = 3000
  draw = jax.jit(jax.vmap(lambda rng: depth.sample_depth_and_timesteps(
      rng, "random", 4, NUM_LEVELS, 2.0, 20)[0]))
  counts = np.bincount(jax.device_get(draw(jax.random.split(jax.random.key(0), num_batches))),
                       minlength=NUM_LEVELS)
  np.testing.assert_allclose(counts / num_batches, 1 / NUM_LEVELS, atol=0.04)


def test_forward_does_not_retrace_when_depth_changes():
  model = tiny_unet()
  params = random_params(model)
  x, t = inputs()
  # chex raises if the function is traced a second time (a new depth would retrace it).
  forward = jax.jit(chex.assert_max_traces(
      lambda params, d: builders.make_model_fn(model, params)(x, t, d), n=1))
  outputs = [forward(params, jnp.int32(k)) for k in (0, 2, 1, 0)]
  assert not np.allclose(outputs[0], outputs[1])


def _adaptive_training(scheme, dispatch, num_levels=2):
  """(config, state, train_step, sharded zero images) of the tiny config with depth training."""
  config = tiny_config()  # 2 levels: k in {0, 1}
  config.depth.training = scheme
  config.depth.power = 2.0
  config.depth.dispatch = dispatch
  mesh = parallel.make_mesh()
  _, state, train_step = train_lib.build_fresh_training(config, mesh)
  images = jax.device_put(jnp.zeros((config.training.batch_size,) + IMAGE, jnp.uint8),
                          parallel.batch_sharding(mesh))
  return config, state, train_step, images


@pytest.mark.parametrize("dispatch", ["switch", "host"])
def test_train_step_does_not_recompile_when_depth_changes(dispatch):
  _, state, train_step, images = _adaptive_training("random", dispatch)
  train_step.compile_all(state, images)
  seen = set()
  with count_compiles() as compiles:
    for step in range(8):
      state, metrics = train_step(state, images, step)
      seen.add(int(metrics["depth"]))
      if dispatch == "host":
        assert int(metrics["depth"]) == train_step.depth_at(step)
  assert len(seen) > 1
  assert not compiles  # every depth's program was compiled by compile_all
  assert len(train_step.programs) == (1 if dispatch == "switch" else 2)


@pytest.mark.slow  # the lax.switch train step runs ~10x slower on CPU (~3 min contended)
@pytest.mark.parametrize("scheme", ["random", "bucketed"])
def test_host_dispatch_trains_as_the_traced_step_does(scheme):
  """Host dispatch trains on what the single lax.switch program draws: same depth at every
  step (a pure function of (seed, step)), same t, so the same losses."""
  num_steps = 8
  runs = {}
  for dispatch in ("switch", "host"):
    _, state, train_step, images = _adaptive_training(scheme, dispatch)
    metrics = []
    for step in range(num_steps):
      state, step_metrics = train_step(state, images, step)
      metrics.append(step_metrics)
    runs[dispatch] = jax.device_get(metrics), train_step
  traced = [int(m["depth"]) for m in runs["switch"][0]]
  host_depths = runs["host"][1].depth_at
  assert [int(m["depth"]) for m in runs["host"][0]] == traced
  assert [host_depths(step) for step in range(num_steps)] == traced
  assert len(set(traced)) > 1, traced  # the steps did change depth
  np.testing.assert_allclose([m["loss"] for m in runs["host"][0]],
                             [m["loss"] for m in runs["switch"][0]], rtol=2e-4)


@pytest.mark.parametrize("scheme", ["random", "bucketed"])
def test_host_depths_are_the_traced_draw_and_a_pure_function_of_seed_and_step(scheme):
  num_levels, power, num_timesteps, num_steps = 3, 2.0, 20, 2000

  def make(seed, chunk=256):
    return depth.HostDepths(seed, train_lib._depth_rng_of_step, scheme, num_levels, power,
                            num_timesteps, chunk=chunk)
  host = make(0)
  picks = [host(step) for step in range(num_steps)]

  @jax.jit
  def traced(steps):
    """The depth the lax.switch train step draws at each step (its rng derivation)."""
    def one(step):
      time_rng = jax.random.split(jax.random.fold_in(jax.random.key(0), step), 3)[1]
      return depth.sample_depth_and_timesteps(time_rng, scheme, 4, num_levels, power,
                                              num_timesteps)[0]
    return jax.vmap(one)(steps)
  np.testing.assert_array_equal(picks, traced(jnp.arange(num_steps)))
  small_chunks = make(0, chunk=8)
  assert [small_chunks(step) for step in reversed(range(40))] == picks[:40][::-1]
  assert picks[:40] != [make(1)(step) for step in range(40)]  # the seed matters
  # random: uniform over depths; bucketed: by the bucket's share of the T steps (3, 3, 14 of 20).
  probabilities = (np.full(num_levels, 1 / num_levels) if scheme == "random" else
                   np.bincount(depth.depth_schedule(num_levels, power, num_timesteps),
                               minlength=num_levels) / num_timesteps)
  counts = np.bincount(picks, minlength=num_levels)
  expected = num_steps * probabilities
  assert np.sum((counts - expected) ** 2 / expected) < 13.8  # 99.9% of chi2(2)


def test_host_dispatch_bucketed_t_lies_in_the_batch_depth_bucket():
  config, state, train_step, images = _adaptive_training("bucketed", "host")
  schedule = depth.depth_schedule(2, 2.0, config.diffusion.num_timesteps)
  base_key = jax.random.key(config.seed)
  for step in range(4):
    k = train_step.depth_at(step)
    # The t the program at depth k draws: draw_timesteps of the step's t key.
    time_rng = jax.random.split(jax.random.fold_in(base_key, step), 3)[1]
    t = depth.draw_timesteps(jax.random.split(time_rng)[1], "bucketed", k,
                             config.training.batch_size, 2, 2.0, config.diffusion.num_timesteps)
    np.testing.assert_array_equal(schedule[np.asarray(t)], k)


def test_sampler_runs_every_depth_in_one_compile():
  """The --mode=sample path: build_sampler from the config, make_sample_fn."""
  config = tiny_config()  # 2 levels: k in {0, 1}
  config.depth.power = 2.0
  model = builders.build_model(config)
  diffusion = builders.build_diffusion(config)
  plan_depths = builders.build_plan(config, diffusion).table["depth"]
  assert set(plan_depths) == {0, 1}
  sampler, _ = builders.build_sampler(config, diffusion)
  sample_fn = builders.make_sample_fn(sampler, model, parallel.make_mesh(), IMAGE, batch_size=4)
  params = random_params(model)
  rngs = [jax.random.key(seed) for seed in (0, 1)]
  with count_compiles() as compiles:
    images = [sample_fn(params, rng) for rng in rngs]
  assert len(compiles) == 1
  assert images[0].shape == (4,) + IMAGE and np.all(np.isfinite(images[0]))


def test_scan_by_depth_matches_one_scan_with_switch():
  model = tiny_unet()
  params = random_params(model)
  model_fn = builders.make_model_fn(model, params)
  table = {"t": np.arange(9, -1, -1, dtype=np.float32),
           "depth": np.array([2, 2, 2, 1, 1, 1, 0, 0, 0, 0], np.int32)}

  def step(x, row):
    return x - 0.05 * model_fn(x, jnp.broadcast_to(row["t"], x.shape[:1]), row["depth"])

  x, _ = inputs()
  switched = jax.jit(lambda x: sampling.run_step_table(step, x, table))(x)
  segmented = jax.jit(lambda x: depth.scan_by_depth(step, x, table))(x)
  np.testing.assert_allclose(segmented, switched, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # three train runs (~55 s on 2 contended cores)
def test_host_dispatch_resume_is_bitwise_equal_to_a_straight_run(tmp_path):
  config = tiny_config()
  config.depth.training = "bucketed"
  config.depth.power = 2.0
  config.training.num_steps = 6
  config.training.checkpoint_every = 3
  straight = train_lib.train(config, str(tmp_path / "straight")).state
  stopped = config.copy_and_resolve_references()
  stopped.training.num_steps = 3
  assert train_lib.train(stopped, str(tmp_path / "resumed")).step == 3
  resumed = train_lib.train(config, str(tmp_path / "resumed")).state
  assert int(resumed.step) == int(straight.step) == 6
  chex.assert_trees_all_equal(jax.device_get(resumed.params), jax.device_get(straight.params))
  chex.assert_trees_all_equal(jax.device_get(resumed.ema_params),
                              jax.device_get(straight.ema_params))


def test_depth_bench_divides_each_round_by_the_shared_baseline(monkeypatch):
  """bench_depth.bench_sampling: one c = 0 run for every skip type, timed first and halfway
  through each round, each sampler's time divided by that round's mean of the two; FLOPs from
  the hand-computed k(t) (2 levels, T = 8)."""
  from jdiff.tools import bench_depth  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.model.ch_mult = (1, 2)
  config.diffusion.num_timesteps = 8
  config.sampling.batch_size = 2
  orders = []

  def fake_rounds(calls, num_rounds):
    assert num_rounds == 2
    orders.append(list(calls))
    times = {name: [1.0, 1.5] for name in calls}
    times.update({"0 first": [2.0, 4.0], "0 halfway": [2.0, 2.0], "interpolate 5": [1.8, 1.5]})
    return times
  monkeypatch.setattr(bench_depth.timing, "interleaved_rounds", fake_rounds)
  results = bench_depth.bench_sampling(config, ("zero", "interpolate"), 2)

  assert orders[0] == ["0 first", "zero 1", "interpolate 1", "zero 2", "interpolate 2",
                       "0 halfway", "zero 3", "interpolate 3", "zero 5", "interpolate 5"]
  assert results["baseline"]["median_s"] == 2.5  # rounds' baselines 2 and 3
  assert results["baseline"]["halfway_over_first"] == {"median": 0.75, "min": 0.5, "max": 1.0}
  zero, interpolate = (results["skip_types"][s]["powers"] for s in ("zero", "interpolate"))
  # zero, c = 1: 1 / 2 and 1.5 / 3 of the baselines -> half the time saved in both rounds.
  assert (zero["1"]["time_saved"], zero["1"]["time_saved_min"],
          zero["1"]["time_saved_max"]) == (0.5, 0.5, 0.5)
  # interpolate, c = 5: 1.8 / 2 = 0.9 and 1.5 / 3 = 0.5 kept -> 0.3 saved (median), 0.1..0.5.
  np.testing.assert_allclose([interpolate["5"]["time_saved"], interpolate["5"]["time_saved_min"],
                              interpolate["5"]["time_saved_max"]], [0.3, 0.1, 0.5])
  # Every round is kept, for pooling runs: 1.8 s of a 2 s baseline, 1.5 s of 3 s.
  np.testing.assert_allclose(interpolate["5"]["time_saved_per_round"], [0.1, 0.5])
  np.testing.assert_allclose(interpolate["5"]["seconds_per_round"], [1.8, 1.5])
  np.testing.assert_allclose(results["baseline"]["seconds_per_round"], [2.0, 3.0])
  steps_per_depth = {"1": [4, 4], "2": [3, 5], "3": [2, 6], "5": [2, 6]}  # k(t) by hand
  for skip_type, rows in (("zero", zero), ("interpolate", interpolate)):
    full, shortcut = results["skip_types"][skip_type]["forward_flops_per_depth"]
    assert 0 < shortcut < full
    for power, (at_full, at_shortcut) in steps_per_depth.items():
      assert rows[power]["steps_per_depth"] == [at_full, at_shortcut]
      np.testing.assert_allclose(rows[power]["flops_saved"],
                                 at_shortcut * (full - shortcut) / (8 * full), rtol=1e-12)
      np.testing.assert_allclose(rows[power]["saved_ratio"],
                                 rows[power]["time_saved"] / rows[power]["flops_saved"])



@pytest.mark.slow  # ~1 min: compiles the train step at each depth and the lax.switch step
def test_depth_bench_train_half_nets_out_the_update(monkeypatch):
  """bench_depth.bench_training: the optimizer + EMA update is timed as its own call, and time
  k / 0 net of it is (time k - update) / (time 0 - update) round by round."""
  from jdiff.tools import bench_depth  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.model.ch_mult = (1, 2)
  config.training.batch_size = 2
  calls_seen = []

  def fake_rounds(calls, num_rounds):
    calls_seen.extend(calls)
    update = calls["update"]()  # the update program really runs on the threaded state
    assert int(update) > 0
    times = {name: [2.0, 3.0] for name in calls}
    times.update({"host 0": [4.0, 6.0], "host 1": [2.0, 4.0], "update": [1.0, 2.0]})
    return times
  monkeypatch.setattr(bench_depth.timing, "interleaved_rounds", fake_rounds)
  training = bench_depth.bench_training(config, 2)
  assert set(calls_seen) == {"host 0", "host 1", "switch 0", "switch 1", "update"}
  # (2 - 1) / (4 - 1) and (4 - 2) / (6 - 2); without the update 0.5 and 2 / 3.
  np.testing.assert_allclose(
      [training["per_depth"][1]["host_time_ratio_net_of_update"][key]
       for key in ("median", "min", "max")], [(1 / 3 + 1 / 2) / 2, 1 / 3, 1 / 2])
  np.testing.assert_allclose(training["per_depth"][1]["host_time_ratio"]["median"],
                             (0.5 + 2 / 3) / 2)
  assert training["update"]["median_s"] == 1.5
  over_full_step = training["update"]["over_full_step"]  # 1 / 4 and 2 / 6
  np.testing.assert_allclose([over_full_step[key] for key in ("median", "min", "max")],
                             [(1 / 4 + 1 / 3) / 2, 1 / 4, 1 / 3])
