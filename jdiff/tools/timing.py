"""Timing and memory of jitted functions: the one place the benchmarks and experiments time.

Every timer compiles first (ahead of time, so compile time is reported apart and never counted
as run time), blocks on each timed call's outputs (jax.block_until_ready) unless asked not to,
and reports the best and median of the timed calls (the best is the least disturbed by other
load on a shared machine). Used by jdiff.tools.bench* and the accelerate notebook.
"""

import resource
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

# The fields of a compiled executable's memory_analysis() that compiled_memory_bytes reports.
MEMORY_FIELDS = ("argument", "output", "alias", "temp", "generated_code")


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older JAX returned one dict per device program
    cost = cost[0] if cost else {}
  return cost


def compiled_memory_bytes(compiled) -> Dict[str, int]:
  """{"<field>_bytes": bytes} of XLA's memory_analysis() of a compiled executable (argument,
  output, alias, temp, generated_code; 0 where the backend reports none)."""
  memory = compiled.memory_analysis()
  return {f"{field}_bytes": int(getattr(memory, f"{field}_size_in_bytes", 0) or 0)
          for field in MEMORY_FIELDS}


def compile_only(jitted: Callable, args: Sequence) -> Tuple[Dict[str, Any], Any]:
  """(stats, compiled executable) of jitted(*args), compiled ahead of time and not run.

  stats: compile_s (lowering + XLA compile), flops (XLA's cost analysis; nan where it has none),
  temp_bytes (XLA's temporary memory of the program).
  """
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  stats = {
      "compile_s": compile_s,
      "flops": float(_cost(compiled).get("flops", float("nan"))),
      "temp_bytes": compiled_memory_bytes(compiled)["temp_bytes"],
  }
  return stats, compiled


def summarize(times: Sequence[float]) -> Dict[str, float]:
  """best_s, median_s, mean_s, total_s and num_timed of a list of call times (seconds)."""
  times = np.asarray(times, np.float64)
  if times.size == 0:
    return {"best_s": float("nan"), "median_s": float("nan"), "mean_s": float("nan"),
            "total_s": 0.0, "num_timed": 0}
  return {"best_s": float(times.min()), "median_s": float(np.median(times)),
          "mean_s": float(times.mean()), "total_s": float(times.sum()), "num_timed": int(times.size)}


def compile_and_run(jitted: Callable, args: Sequence, num_iters: int):
  """(compile_only's stats plus summarize's of num_iters timed calls after one warm-up call, the
  compiled executable, the warm-up call's output). The arguments must not be donated."""
  stats, compiled = compile_only(jitted, args)
  output = jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(num_iters):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return dict(stats, **summarize(times)), compiled, output


def compile_and_time(jitted: Callable, args: Sequence, num_iters: int) -> Dict[str, Any]:
  """compile_and_run's stats."""
  return compile_and_run(jitted, args, num_iters)[0]


def run_threaded(step_fn: Callable, state, args_at: Callable[[int], Sequence], num_calls: int,
                 *, warmup: int = 1, block_each: bool = True):
  """(stats, final state, outputs) of `state, output = step_fn(state, *args_at(i))` for
  i in 0..num_calls-1, the state threaded through (a train step that donates its state).

  The first `warmup` calls (compilation, if step_fn is not compiled yet) are not timed. With
  block_each every call is timed alone (stats: summarize's of the timed calls); without it the
  calls are dispatched asynchronously, as a training loop runs, and only their total is timed
  (stats: total_s, num_timed and mean_s = total_s / num_timed). outputs: every call's output.
  """
  outputs, times = [], []
  start = None
  for i in range(num_calls):
    if i == warmup:
      jax.block_until_ready((state, outputs))
      start = time.perf_counter()
    call_start = time.perf_counter()
    state, output = step_fn(state, *args_at(i))
    outputs.append(output)
    if block_each and i >= warmup:
      jax.block_until_ready(output)
      times.append(time.perf_counter() - call_start)
  jax.block_until_ready((state, outputs))
  if block_each:
    return summarize(times), state, outputs
  total = time.perf_counter() - start if start is not None else 0.0
  num_timed = max(num_calls - warmup, 0)
  return {"total_s": total, "num_timed": num_timed,
          "mean_s": total / num_timed if num_timed else float("nan")}, state, outputs


def interleaved_rounds(calls: Mapping[str, Callable[[], Any]], num_rounds: int,
                       warmup_rounds: int = 1) -> Dict[str, list]:
  """{name: [seconds of each round]}: every call run once per round, in turn, each blocked on
  (jax.block_until_ready), so that load from other processes on a shared machine falls on all
  of them alike and a ratio of two calls can be taken round by round (ratio_stats). The first
  warmup_rounds rounds (compiles, first allocations) are not timed."""
  for _ in range(warmup_rounds):
    for call in calls.values():
      jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for _ in range(num_rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - start)
  return times


def ratio_stats(numerator: Sequence[float], denominator: Sequence[float]) -> Dict[str, float]:
  """median, min and max over rounds of numerator[i] / denominator[i] (times of one round)."""
  ratios = np.asarray(numerator, np.float64) / np.asarray(denominator, np.float64)
  return {"median": float(np.median(ratios)), "min": float(ratios.min()),
          "max": float(ratios.max())}


def device_memory_stats() -> Optional[dict]:
  """device.memory_stats() of the first local device, or None where the backend has none (CPU)."""
  try:
    return jax.local_devices()[0].memory_stats() or None
  except Exception:  # pylint: disable=broad-except  # some backends raise instead of None
    return None


def device_peak_bytes() -> Optional[int]:
  """peak_bytes_in_use of the first local device (it only grows in a process), or None where the
  backend reports none."""
  stats = device_memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def peak_memory_bytes() -> Dict[str, Optional[int]]:
  """The device's peak bytes in use (None where not reported) and the host's max RSS."""
  return {
      "device_peak_bytes": device_peak_bytes(),
      "host_max_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
  }
