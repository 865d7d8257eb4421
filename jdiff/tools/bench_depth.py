"""--mode=bench with config.bench.kind='depth': adaptive depth, FLOPs saved against time saved.

Training (the config's skip type): the train step compiled at each static depth k (host
dispatch, as --mode=train runs it with depth.dispatch=host) and the one lax.switch step
(depth.dispatch=switch, its state's step set so that its in-graph draw picks k), all
interleaved round by round, each call blocked on. Per depth: XLA's FLOPs of the step (cost
analysis of the static-depth program compiled with direct convolutions, cpu.convolutions=eigen:
the network's FLOPs, where a Winograd program counts fewer) and the median over rounds of
time(k) / time(0) with its min..max; per scheme (full, random, bucketed at c = depth.power or
2) the expected step time sum_k p(k) time(k) against full depth, beside the FLOP ratio
sum_k p(k) flops(k) / flops(0).
The optimizer and EMA updates (train.apply_gradients) are timed alone in the same rounds: their
cost is the same at every depth (all parameters are updated), so time k / 0 net of it is shown
too, the part of a step that can shrink with depth. Timed as a program of its own, the update
pays its own dispatch and state traffic: on tiny nets, where that dominates, the net ratio is
meaningless (it can go negative); read it on nets whose steps take tenths of a second or more.

Sampling (each skip type in bench.skip_types, c in {1, 2, 3, 5}, against c = 0), the config's
sampler (sampling.name and sampling.steps: the ancestral sampler over all T steps by default;
e.g. --config.sampling.name=dpm_solver_pp --config.sampling.steps=20) at batch
sampling.batch_size:
  flops:  sum over the plan's network evaluations of the U-Net forward's FLOPs at k(t) of each
          evaluation's step. XLA's cost analysis counts a
          while loop's body once and a lax.switch as its costliest branch, so the sampler's own
          count says nothing; the forward is compiled at each static depth and those summed.
  time:   the jitted sampler as --mode=sample runs it (one scan, lax.switch per step; at c = 0
          the plain full network, the same for every skip type, so one shared baseline); all
          samplers interleaved, bench.num_iters rounds after a warm-up, the baseline timed at
          the start and halfway through each round (bench_sampling).
  saved:  1 - time / the round's baseline time (median, min..max over rounds); FLOPs likewise.
Also times the alternative sampler dispatch (one lax.scan per depth segment, static k) for zero
skip at c = 2. Prints the paper's Table 2 (Giladi et al.) beside jdiff's numbers and
writes <workdir>/bench_depth.json. On a shared machine the ratios of one round are what to read.
bench.depth_parts picks the halves to run (training, sampling; default both).

  python -m jdiff.main --config=configs/quickstart_adaptive.py --workdir=workdirs/bench_depth \\
      --mode=bench --config.bench.kind=depth
"""

import functools
import os
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import builders
from jdiff import compute as compute_lib
from jdiff import depth as depth_lib
from jdiff import parallel
from jdiff import sampling
from jdiff.drivers import train as train_lib
from jdiff.models.unet import SKIP_TYPES
from jdiff.tools import report
from jdiff.tools import timing

POWERS = (0, 1, 2, 3, 5)
# The configuration the sampler dispatch comparison times (the paper's choice).
DISPATCH_SKIP_TYPE, DISPATCH_POWER = "zero", 2
# Table 2 of Giladi et al. (adaptive-depth U-Net): time speed-up (%) of sampling against c = 0, by skip type
# and c (the text extraction puts the c = 1 column on the Zero row: 30.59, 32.15, 20.86 are the
# c = 1 values of Zero, Duplicate and Interpolate).
PAPER_TABLE_2 = {
    "zero": {"1": 30.59, "2": 47.52, "3": 51.44, "5": 57.46},
    "duplicate": {"1": 32.15, "2": 45.63, "3": 51.99, "5": 58.38},
    "interpolate": {"1": 20.86, "2": 29.34, "3": 32.68, "5": 36.19},
}


def forward_flops_per_depth(config, params, x, t) -> list:
  """XLA's FLOP count of one U-Net forward of config's model at each static depth k: the
  network's FLOPs (Compute.flop_counting: a Winograd program counts fewer)."""
  counting = compute_lib.for_backend(config).flop_counting()
  model = builders.build_model(config, counting)
  flops = []
  for k in range(model.num_levels):
    forward = counting.jit(
        lambda params, x, t, k=k: builders.make_model_fn(model, params)(x, t, depth=k))
    stats, _ = timing.compile_only(forward, (params, x, t))
    flops.append(stats["flops"])
  return flops


def make_sampler(config, model, diffusion, power: float, batch_size) -> Tuple[Callable, Any]:
  """(jitted (params, rng) -> images, its plan): config's sampler (sampling.name, steps) at
  k(t) with c = power (0: the plain full network), as --mode=sample runs it."""
  shape = builders.image_shape(config)
  power_config = config.copy_and_resolve_references()
  power_config.depth.power = power
  plan = builders.build_plan(power_config, diffusion)

  @compute_lib.for_backend(config).jit
  def sample(params, rng):
    x_T = jax.random.normal(rng, (batch_size,) + shape)
    return sampling.run_plan(plan, builders.make_model_fn(model, params), x_T, rng)
  return sample, plan


def make_dispatch_samplers(config, model, diffusion, schedule, batch_size) -> Dict[str, Callable]:
  """The same ancestral plan run with each dispatch: 'switch' (sampling.run_plan: one scan,
  lax.switch per step) and 'segments' (depth.scan_by_depth: one scan per depth, k static)."""
  shape = builders.image_shape(config)
  plan = sampling.ancestral_plan(diffusion, variance_type=config.diffusion.variance_type,
                                 clip_denoised=builders.clip_x0(config, "ancestral"),
                                 depth_schedule=schedule)

  def segments(model_fn, x_T, rng):
    return depth_lib.scan_by_depth(lambda x, row: plan.step(model_fn, x, row, rng), x_T,
                                   plan.table)

  def make(run):
    @compute_lib.for_backend(config).jit
    def sample(params, rng):
      x_T = jax.random.normal(rng, (batch_size,) + shape)
      return run(builders.make_model_fn(model, params), x_T, rng)
    return sample

  return {"switch": make(lambda model_fn, x_T, rng: sampling.run_plan(plan, model_fn, x_T, rng)),
          "segments": make(segments)}


def _scheme_probabilities(num_levels: int, power: float, num_timesteps: int) -> Dict[str, np.ndarray]:
  """p(k) of a training step's depth under each scheme (depth.draw_depth)."""
  bucket_counts = np.bincount(depth_lib.depth_schedule(num_levels, power, num_timesteps),
                              minlength=num_levels)
  return {"full": np.eye(num_levels)[0], "random": np.full(num_levels, 1.0 / num_levels),
          "bucketed": bucket_counts / num_timesteps}


def bench_training(config, num_rounds: int) -> dict:
  """Train-step time and FLOPs per depth, host dispatch and lax.switch, interleaved."""
  mesh = parallel.make_mesh()
  host_config = config.copy_and_resolve_references()
  if host_config.depth.training == "full":
    host_config.depth.training = "random"  # any adaptive scheme: the programs are the same
  host_config.depth.dispatch = "host"
  switch_config = host_config.copy_and_resolve_references()
  switch_config.depth.dispatch = "switch"
  model, state, host_step = train_lib.build_fresh_training(host_config, mesh)
  # Its own model: the backend's convolution may differ where the gradient sits inside
  # lax.switch (builders.gradient_in_loop); the parameters are the same.
  switch_step = train_lib.make_train_step(switch_config, builders.build_model(switch_config),
                                          builders.build_diffusion(switch_config),
                                          builders.build_optimizer(switch_config.training), mesh)
  num_levels = model.num_levels
  batch_size = config.training.batch_size
  images = parallel.global_batch_from_local(
      np.random.default_rng(0).integers(0, 256, (batch_size // jax.process_count(),)
                                        + builders.image_shape(config), dtype=np.uint8), mesh)
  # The network's FLOPs per depth. A Winograd program counts fewer multiply-adds, so then
  # programs of their own are compiled for the count only (Compute.flop_counting); elsewhere
  # the timed programs are counted.
  compute = compute_lib.for_backend(host_config)
  counting = compute.flop_counting()
  if counting != compute:
    counting_step = train_lib.make_train_step(
        host_config, builders.build_model(host_config, counting),
        builders.build_diffusion(host_config), builders.build_optimizer(host_config.training),
        mesh, counting)
  else:
    counting_step = host_step
  flops = [timing.compile_only(counting_step.programs[k], (state, images))[0]["flops"]
           for k in range(num_levels)]
  compile_s = {"host (all depths)": host_step.compile_all(state, images),
               "switch": switch_step.compile_all(state, images)}
  # A step whose in-graph draw picks k, for each k: the switch program then runs depth k.
  step_at_depth = {}
  for step in range(10_000):
    step_at_depth.setdefault(host_step.depth_at(step), step)
    if len(step_at_depth) == num_levels:
      break
  replicated = parallel.replicated(mesh)
  threaded = {"state": state}

  def call(program, set_step=None):
    def run():
      current = threaded["state"]
      if set_step is not None:
        current = current.replace(step=jax.device_put(np.int32(set_step), replicated))
      threaded["state"], metrics = program(current, images)
      return metrics["depth"]
    return run

  calls = {}
  for k in range(num_levels):
    calls[f"host {k}"] = call(host_step.compiled(k))
    calls[f"switch {k}"] = call(switch_step.compiled(None), step_at_depth[k])
  # The optimizer and EMA updates alone (the same at every depth), on stand-in gradients.
  update = make_update_program(host_config, mesh)
  stand_in_grads = jax.tree.map(jnp.copy, state.params)

  def run_update():
    threaded["state"] = update(threaded["state"], stand_in_grads)
    return threaded["state"].step
  calls["update"] = run_update
  for k in range(num_levels):  # the switch program really ran depth k
    assert int(calls[f"switch {k}"]()) == k
  times = timing.interleaved_rounds(calls, num_rounds)
  per_depth = []
  for k in range(num_levels):
    per_depth.append({
        "depth": k, "flops": flops[k], "flops_ratio": flops[k] / flops[0],
        "host_median_s": float(np.median(times[f"host {k}"])),
        "switch_median_s": float(np.median(times[f"switch {k}"])),
        "host_time_ratio": timing.ratio_stats(times[f"host {k}"], times["host 0"]),
        "switch_over_host": timing.ratio_stats(times[f"switch {k}"], times[f"host {k}"]),
        "host_time_ratio_net_of_update": timing.ratio_stats(
            np.subtract(times[f"host {k}"], times["update"]),
            np.subtract(times["host 0"], times["update"])),
    })
  power = config.depth.power or 2.0
  schemes = {}
  host_rounds = np.asarray([times[f"host {k}"] for k in range(num_levels)])  # (levels, rounds)
  switch_rounds = np.asarray([times[f"switch {k}"] for k in range(num_levels)])
  for scheme, p in _scheme_probabilities(num_levels, power, config.diffusion.num_timesteps).items():
    host_expected = p @ host_rounds  # expected step time per round
    schemes[scheme] = {
        "depth_probabilities": p.tolist(),
        "flops_ratio": float(p @ np.asarray(flops) / flops[0]),
        "host_time_ratio": timing.ratio_stats(host_expected, host_rounds[0]),
        "switch_time_ratio": timing.ratio_stats(p @ switch_rounds, host_rounds[0]),
        "host_expected_s": float(np.median(host_expected)),
    }
  return {"skip_type": config.model.skip_type, "batch_size": batch_size, "power": power,
          "num_rounds": num_rounds, "compile_s": compile_s, "per_depth": per_depth,
          "update": {"median_s": float(np.median(times["update"])),
                     "over_full_step": timing.ratio_stats(times["update"], times["host 0"])},
          "schemes": schemes}


def make_update_program(config, mesh) -> Callable:
  """Jitted (state, grads) -> state: the train step's optimizer and EMA updates alone
  (train.apply_gradients), state donated as in the train step."""
  compute = compute_lib.for_backend(config)
  optimizer = builders.build_optimizer(config.training, compute)
  ema_decay_at = functools.partial(train_lib.ema_decay_of_step, config.training.ema_decay,
                                   config.training.ema_warmup)
  replicated = parallel.replicated(mesh)

  def update(state, grads):
    return train_lib.apply_gradients(optimizer, ema_decay_at, state, jnp.float32(0.0), grads,
                                     state.loss_history)[0]
  return compute.jit(update, in_shardings=(replicated, replicated), out_shardings=replicated,
                     donate_argnums=0)


def _model_with_skip(config, skip_type: str):
  """(config with that skip type, its U-Net, its initial params)."""
  skip_config = config.copy_and_resolve_references()
  skip_config.model.skip_type = skip_type
  model = builders.build_model(skip_config)
  return skip_config, model, builders.new_params(model, skip_config, config.seed)


def bench_sampling(config, skip_types, num_rounds: int) -> dict:
  """FLOPs and time saved by c, for each skip type, against one shared c = 0 baseline.

  c = 0 is the same full network whatever the skip type (the skip type only decides what
  replaces the skipped levels), sampled as --mode=sample samples it (no depth column, no
  lax.switch). Each round times it twice, first and halfway through, and divides every other
  sampler's time of that round by the mean of the two, so that a drift of the machine's speed
  during the run cancels in the ratios; the spread of those two baseline times is reported.
  """
  batch_size = config.sampling.batch_size
  diffusion = builders.build_diffusion(config)
  shape = builders.image_shape(config)
  x = jnp.zeros((batch_size,) + shape, jnp.float32)
  t = jnp.zeros((batch_size,), jnp.float32)
  args, per_depth, calls, plans = {}, {}, {}, {}
  for skip_type in skip_types:
    skip_config, model, params = _model_with_skip(config, skip_type)
    args[skip_type] = (params, jax.random.key(0))
    per_depth[skip_type] = forward_flops_per_depth(skip_config, params, x, t)
    if not calls:
      full_network, full_plan = make_sampler(skip_config, model, diffusion, 0, batch_size)
      calls["0 first"] = lambda s=full_network, a=args[skip_type]: s(*a)
    for power in POWERS[1:]:
      sampler, plans[(skip_type, power)] = make_sampler(skip_config, model, diffusion, power,
                                                        batch_size)
      calls[f"{skip_type} {power}"] = lambda s=sampler, a=args[skip_type]: s(*a)
  # The order of a round: baseline, c = 1 and 2 of every skip type, baseline, c = 3 and 5.
  order = (["0 first"] + [f"{skip} {power}" for power in POWERS[1:3] for skip in skip_types]
           + ["0 halfway"] + [f"{skip} {power}" for power in POWERS[3:] for skip in skip_types])
  calls["0 halfway"] = calls["0 first"]
  calls = {name: calls[name] for name in order}
  times = timing.interleaved_rounds(calls, num_rounds)
  baseline = (np.asarray(times["0 first"]) + np.asarray(times["0 halfway"])) / 2
  num_levels = len(next(iter(per_depth.values())))
  evaluations = full_plan.num_evaluations
  results = {
      "sampler": config.sampling.name, "network_evaluations": evaluations,
      "baseline": {"median_s": float(np.median(baseline)),
                   "seconds_per_round": baseline.tolist(),
                   "halfway_over_first": timing.ratio_stats(times["0 halfway"],
                                                            times["0 first"])},
      "skip_types": {}}
  for skip_type in skip_types:
    full_flops = float(evaluations * per_depth[skip_type][0])
    rows = {"0": {"flops": full_flops, "median_s": float(np.median(baseline)),
                  "steps_per_depth": [evaluations] + [0] * (num_levels - 1), "flops_saved": 0.0,
                  "time_saved": 0.0, "time_saved_min": 0.0, "time_saved_max": 0.0,
                  "saved_ratio": None}}  # null in the JSON: nothing saved, no ratio
    for power in POWERS[1:]:
      # The depth of each network evaluation of the plan (k(t) at its step).
      schedule = np.asarray(plans[(skip_type, power)].table["depth"])
      flops = float(sum(per_depth[skip_type][k] for k in schedule))
      row_times = times[f"{skip_type} {power}"]
      kept = timing.ratio_stats(row_times, baseline)  # time(c) / time(0), per round
      row = {"flops": flops, "median_s": float(np.median(row_times)),
             "steps_per_depth": np.bincount(schedule, minlength=num_levels).tolist(),
             "flops_saved": 1.0 - flops / full_flops, "time_saved": 1.0 - kept["median"],
             "time_saved_min": 1.0 - kept["max"], "time_saved_max": 1.0 - kept["min"],
             # Every round's, so that several runs pool into one distribution.
             "seconds_per_round": [float(x) for x in row_times],
             "time_saved_per_round": (1.0 - np.asarray(row_times) / baseline).tolist()}
      row["saved_ratio"] = row["time_saved"] / row["flops_saved"]
      rows[str(power)] = row
    results["skip_types"][skip_type] = {"forward_flops_per_depth": per_depth[skip_type],
                                        "powers": rows}
  if DISPATCH_SKIP_TYPE in skip_types:
    results["dispatch"] = bench_dispatch(config, num_rounds)
  return results


def bench_dispatch(config, num_rounds: int) -> dict:
  """The sampler at zero skip, c = 2, with each dispatch (make_dispatch_samplers)."""
  skip_config, model, params = _model_with_skip(config, DISPATCH_SKIP_TYPE)
  schedule = depth_lib.depth_schedule(model.num_levels, DISPATCH_POWER,
                                      config.diffusion.num_timesteps)
  dispatch = make_dispatch_samplers(skip_config, model, builders.build_diffusion(config),
                                    schedule, config.sampling.batch_size)
  args = (params, jax.random.key(0))
  times = timing.interleaved_rounds({name: (lambda s=s: s(*args)) for name, s in dispatch.items()},
                                    num_rounds)
  return {"power": DISPATCH_POWER, **{name: float(np.median(v)) for name, v in times.items()},
          "segments_over_switch": timing.ratio_stats(times["segments"], times["switch"])}


def run(config, workdir: str) -> dict:
  """Training and sampling benches; writes <workdir>/bench_depth.json; returns the results."""
  num_rounds = config.bench.num_iters
  parts = tuple(config.bench.depth_parts)
  results = {"device": str(jax.devices()[0].device_kind),
             "num_timesteps": config.diffusion.num_timesteps,
             "batch_size": config.sampling.batch_size, "num_rounds": num_rounds}
  if "training" in parts:
    results["training"] = bench_training(config, num_rounds)
    print_training_table(results)
  if "sampling" in parts:
    results.update(bench_sampling(config, tuple(config.bench.skip_types) or SKIP_TYPES,
                                  num_rounds))
  report.write_json(os.path.join(workdir, "bench_depth.json"), results)
  if "sampling" in parts:
    print_table(results)
  return results


def _spread(stats: dict, fmt: str = ".3f") -> str:
  return f"{stats['median']:{fmt}} ({stats['min']:{fmt}}..{stats['max']:{fmt}})"


def print_training_table(results: dict) -> str:
  training = results["training"]
  rounds = f"median (min..max) of {training['num_rounds']} interleaved rounds"
  per_depth = report.print_table(
      training["per_depth"],
      [report.Column("depth k", "depth"),
       report.Column("GFLOP/step", lambda r: r["flops"] / 1e9, ".3f"),
       report.Column("FLOPs k / 0", "flops_ratio", ".3f"),
       report.Column("time k / 0 (host)", lambda r: _spread(r["host_time_ratio"])),
       report.Column("host s", "host_median_s", ".4f"),
       report.Column("switch s", "switch_median_s", ".4f"),
       report.Column("switch / host", lambda r: _spread(r["switch_over_host"], ".2f")),
       report.Column("time k / 0 net of update",
                     lambda r: _spread(r["host_time_ratio_net_of_update"]))],
      title=(f"train step per depth, device {results['device']}, skip {training['skip_type']}, "
             f"batch {training['batch_size']}; {rounds}"),
      notes=["compile s: " + ", ".join(f"{k} {v:.1f}" for k, v in training["compile_s"].items()),
             f"update: the optimizer and EMA updates alone (the same at every depth) take "
             f"{training['update']['median_s']:.4f} s, "
             f"{_spread(training['update']['over_full_step'])} of a full-depth step"])
  schemes = report.print_table(
      [dict(v, scheme=k) for k, v in training["schemes"].items()],
      [report.Column("scheme", "scheme"),
       report.Column("p(k)", lambda r: " ".join(f"{p:.2f}" for p in r["depth_probabilities"])),
       report.Column("FLOPs / full", "flops_ratio", ".3f"),
       report.Column("time / full (host)", lambda r: _spread(r["host_time_ratio"])),
       report.Column("time / full (switch)", lambda r: _spread(r["switch_time_ratio"]))],
      title=f"train step by scheme (c = {training['power']}): expected time per step / full depth")
  return per_depth + "\n" + schemes


def print_table(results: dict) -> str:
  """Table 2 of the paper beside jdiff's: rows skip types, columns c; each cell time saved
  (median of rounds) / FLOPs saved, then the paper's time saved; then the spread."""
  entries = [dict(entry, skip_type=skip_type) for skip_type, entry in results["skip_types"].items()]
  saved = report.print_table(
      entries,
      [report.Column("skip type", "skip_type")] + [
          report.Column(f"c = {power}", lambda e, p=str(power): e,
                        lambda e, p=str(power): (
                            f"{e['powers'][p]['time_saved']:.1%} / "
                            f"{e['powers'][p]['flops_saved']:.1%} | paper "
                            + (f"{PAPER_TABLE_2[e['skip_type']][p]:.1f}%" if p != "0" else "0%")))
          for power in POWERS],
      title=(f"sampling, {results['sampler']} ({results['network_evaluations']} network "
             f"evaluations), device: "
             f"{results['device']}, T={results['num_timesteps']}, batch "
             f"{results['batch_size']}: time saved / FLOPs saved against c = 0 | the paper's "
             f"Table 2 time saved (its CIFAR-10 net, T = 1000, its hardware)"))
  spread = report.print_table(
      entries,
      [report.Column("skip type", "skip_type")] + [
          report.Column(f"c = {power}", lambda e, p=str(power): e["powers"][p],
                        lambda row: (f"{row['time_saved']:.1%} ({row['time_saved_min']:.1%}.."
                                     f"{row['time_saved_max']:.1%}) x{row['saved_ratio']:.2f}"))
          for power in POWERS[1:]],
      title=(f"time saved, median (min..max) of {results['num_rounds']} interleaved rounds, and "
             f"time saved / FLOPs saved, against the shared c = 0 run"))
  baseline = results["baseline"]
  notes = [f"c = 0 (the full network, as --mode=sample runs it): {baseline['median_s']:.3f} s, "
           f"timed twice a round; halfway / first {_spread(baseline['halfway_over_first'])}"]
  dispatch = results.get("dispatch")
  if dispatch:
    notes.append(f"sampler dispatch (zero, c = {dispatch['power']}): one scan with lax.switch "
                 f"{dispatch['switch']:.3f} s, one scan per depth segment {dispatch['segments']:.3f}"
                 f" s (segments / switch {_spread(dispatch['segments_over_switch'], '.2f')})")
  print("\n".join(notes), flush=True)
  return saved + "\n" + spread + "\n" + "\n".join(notes)
