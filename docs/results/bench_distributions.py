"""The CPU benchmarks of docs/results/ as distributions over all their rounds and runs, not as
one run's median.

  python docs/results/bench_distributions.py   # from the repository root; reads JSONs only, < 1 s

Reads every benchmark JSON in bench_torch_cpu/, bench_depth_ho_cpu/, bench_depth_quickstart_cpu/
and bench_samplers_cpu/ and writes bench_distributions.json and bench_distributions.md beside
this script. Every number is CPU-only (2 cores; the runs' own settings are in their JSONs).

What the JSONs hold decides what can be computed:
  - bench_torch_*.json keep every round's time of both libraries: per cell, the median and
    min..max of the per-round ratios over all rounds of all runs, pooled.
  - bench_depth_*.json and bench_samplers.json keep, per cell and run, only the median, min and
    max over that run's rounds (not the rounds). Per cell: each run's median, the median of those
    medians, and the min..max over every round of every run (the runs' min and max). A median
    over the pooled rounds cannot be recovered from them.
"""
import glob
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(pattern):
  return {os.path.relpath(path, HERE): json.load(open(path))
          for path in sorted(glob.glob(os.path.join(HERE, pattern)))}


def _spread(values):
  values = np.asarray(values, np.float64)
  return {"median": float(np.median(values)), "min": float(values.min()),
          "max": float(values.max()), "n": int(values.size)}


def _pooled(per_run):
  """per_run: [(file, {"median", "min", "max"}, rounds)] -> median of run medians, min..max of
  every round, the runs' medians."""
  return {"median_of_run_medians": float(np.median([s["median"] for _, s, _ in per_run])),
          "run_medians": {name: s["median"] for name, s, _ in per_run},
          "min": float(min(s["min"] for _, s, _ in per_run)),
          "max": float(max(s["max"] for _, s, _ in per_run)),
          "rounds": int(sum(rounds for _, _, rounds in per_run)), "runs": len(per_run)}




def torch_cells():
  """jdiff / PyTorch images per second, per round = torch seconds / jdiff seconds of that round
  (both time the same images)."""
  runs = _load("bench_torch_cpu/bench_torch_*.json")
  cells = {}
  for name, run in runs.items():
    for row in run["rows"]:
      jdiff_s, torch_s = np.asarray(row["jdiff_s"]), np.asarray(row["torch_s"])
      images = row["batch"]  # the JSONs give seconds per call of one batch
      # jdiff's CPU settings are cells of their own ("plain": no CPU tuning, as GPU/TPU run).
      kernels = row.get("cpu_convolutions", "winograd")
      cell = row["what"] + ("" if kernels == "winograd" else f" [{kernels}]")
      ratios = torch_s / jdiff_s
      # The run's own median of per-round ratios, recomputed: must equal its JSON's.
      assert abs(np.median(ratios) - row["speed_ratio"]["median"]) < 1e-9, (name, row["what"])
      entry = cells.setdefault(cell, {"ratios": [], "runs": {}, "jdiff_images_per_s": [],
                                      "torch_images_per_s": []})
      entry["ratios"].extend(ratios.tolist())
      entry["runs"][name] = _spread(ratios)
      entry["jdiff_images_per_s"].extend((images / jdiff_s).tolist())
      entry["torch_images_per_s"].extend((images / torch_s).tolist())
  order = ["forward 1", "forward 8", "forward 32", "train"]
  cells = dict(sorted(cells.items(), key=lambda item: (
      order.index(item[0].split(" [")[0]) if item[0].split(" [")[0] in order else len(order),
      item[0])))
  return {cell: {"jdiff_over_torch": _spread(e["ratios"]), "per_run": e["runs"],
                 "jdiff_images_per_s": _spread(e["jdiff_images_per_s"]),
                 "torch_images_per_s": _spread(e["torch_images_per_s"])}
          for cell, e in cells.items()}, sorted(runs)


def depth_sampling_cells(pattern):
  """Time saved and time saved / FLOPs saved per skip type and c (c > 0)."""
  runs = _load(pattern)
  cells = {}
  for name, run in runs.items():
    for skip, entry in run["skip_types"].items():
      for power, row in entry["powers"].items():
        if float(power) == 0:
          continue
        cell = cells.setdefault(f"{skip} c={power}", {"flops_saved": {}, "time_saved": [],
                                                      "saved_ratio": []})
        cell["flops_saved"][name] = row["flops_saved"]
        stats = {"median": row["time_saved"], "min": row["time_saved_min"],
                 "max": row["time_saved_max"]}
        cell["time_saved"].append((name, stats, run["num_rounds"]))
        cell["saved_ratio"].append((name, {k: v / row["flops_saved"] for k, v in stats.items()},
                                    run["num_rounds"]))
  return {cell: {"flops_saved": c["flops_saved"], "time_saved": _pooled(c["time_saved"]),
                 "time_saved_over_flops_saved": _pooled(c["saved_ratio"])}
          for cell, c in cells.items()}, sorted(runs)


def depth_training_cells():
  """Step time at depth k (and of each scheme's expected step) / full depth, host dispatch."""
  runs = _load("bench_depth_ho_cpu/bench_depth_ho_train_*.json")
  cells = {}
  for name, run in runs.items():
    training = run["training"]
    rows = [(f"depth {row['depth']}", row["flops_ratio"], row["host_time_ratio"],
             row["host_time_ratio_net_of_update"], row["switch_over_host"])
            for row in training["per_depth"] if row["depth"] > 0]
    rows += [(f"scheme {scheme}", row["flops_ratio"], row["host_time_ratio"], None, None)
             for scheme, row in training["schemes"].items() if scheme != "full"]
    rows += [("depth 0", 1.0, None, None, training["per_depth"][0]["switch_over_host"])]
    for cell, flops_ratio, stats, net, switch in rows:
      entry = cells.setdefault(cell, {"flops_ratio": flops_ratio, "time_ratio": [], "net": [],
                                      "switch": []})
      for key, value in (("time_ratio", stats), ("net", net), ("switch", switch)):
        if value is not None:
          entry[key].append((name, value, training["num_rounds"]))
    full = cells.setdefault("full depth", {"step_s": {}, "update_s": {}})
    full["step_s"][name] = training["per_depth"][0]["host_median_s"]
    full["update_s"][name] = training["update"]["median_s"]
  result = {}
  for cell, e in cells.items():
    if cell == "full depth":
      result[cell] = {"host_step_median_s_per_run": e["step_s"],
                      "update_median_s_per_run": e["update_s"]}
      continue
    result[cell] = {"flops_ratio": e["flops_ratio"]}
    if e["time_ratio"]:
      pooled = _pooled(e["time_ratio"])
      result[cell]["time_ratio"] = pooled
      result[cell]["time_ratio_over_flops_ratio"] = {
          "median_of_run_medians": pooled["median_of_run_medians"] / e["flops_ratio"],
          "run_medians": {k: v / e["flops_ratio"] for k, v in pooled["run_medians"].items()},
          "min": pooled["min"] / e["flops_ratio"], "max": pooled["max"] / e["flops_ratio"]}
    if e["net"]:
      net = _pooled(e["net"])
      result[cell]["time_ratio_net_of_update"] = net
      result[cell]["time_ratio_net_of_update_over_flops_ratio"] = {
          "run_medians": {k: v / e["flops_ratio"] for k, v in net["run_medians"].items()}}
    if e["switch"]:
      result[cell]["switch_over_host"] = _pooled(e["switch"])
  return result, sorted(runs)


def sampler_cells():
  """s/sample of each S-step sampler / ((S / T) x DDPM-T's), over all rows (one run)."""
  runs = _load("bench_samplers_cpu/bench_samplers.json")
  result = {}
  for name, run in runs.items():
    rows = [row for row in run["rows"] if row["family"] != "ddpm"]
    result[name] = {"rows": len(rows), "rounds": run["num_iters"],
                    "row_medians": _spread([row["cost_vs_step_share"]["median"] for row in rows]),
                    "every_round_min": min(row["cost_vs_step_share"]["min"] for row in rows),
                    "every_round_max": max(row["cost_vs_step_share"]["max"] for row in rows)}
  return result


def _fmt_pooled(p, fmt):
  return (f"{format(p['median_of_run_medians'], fmt)} ({format(p['min'], fmt)}..{format(p['max'], fmt)})"
          + ("" if p["runs"] == 1 else " [" + ", ".join(format(v, fmt) for v in p["run_medians"].values()) + "]"))


def _summary(what, cells):
  ratios = [c["time_saved_over_flops_saved"] for c in cells.values()]
  medians = [r["median_of_run_medians"] for r in ratios]
  return (f"{what}: time saved / FLOPs saved, cell medians {min(medians):.2f}..{max(medians):.2f} "
          f"({sum(m >= 1 for m in medians)} of {len(ratios)} at least 1.00, "
          f"{sum(m < 0.95 for m in medians)} below 0.95); cells with a round below 1.00: "
          f"{sum(r['min'] < 1 for r in ratios)} of {len(ratios)}; single rounds "
          f"{min(r['min'] for r in ratios):.2f}..{max(r['max'] for r in ratios):.2f}.")


def main():
  torch, torch_runs = torch_cells()
  ho_sampling, ho_sampling_runs = depth_sampling_cells("bench_depth_ho_cpu/bench_depth_ho_sampling_T20*.json")
  quick, quick_runs = depth_sampling_cells("bench_depth_quickstart_cpu/bench_depth_quickstart.json")
  training, training_runs = depth_training_cells()
  samplers = sampler_cells()
  results = {
      "device": "CPU only (2 cores); no accelerator was measured",
      "bench_torch": {"runs": torch_runs, "cells": torch},
      "depth_sampling_ho": {"runs": ho_sampling_runs, "cells": ho_sampling},
      "depth_sampling_ho_per_run": {run: depth_sampling_cells(run)[0] for run in ho_sampling_runs},
      "depth_sampling_quickstart": {"runs": quick_runs, "cells": quick},
      "depth_training_ho": {"runs": training_runs, "cells": training},
      "samplers": samplers,
  }
  with open(os.path.join(HERE, "bench_distributions.json"), "w") as f:
    json.dump(results, f, indent=1)

  lines = ["# CPU benchmarks as distributions", "",
           "Written by `python docs/results/bench_distributions.py` from the benchmark JSONs of "
           "this folder ([bench_distributions.json](bench_distributions.json)). **CPU only** (2 "
           "cores). Each cell: median (min..max over every round of every run).", ""]
  lines += ["## jdiff / PyTorch images per second, Ho et al.'s net (`bench_torch_cpu/`)", "",
            f"Runs {', '.join(torch_runs)}; every round's ratio pooled.", "",
            "| cell | rounds | jdiff / PyTorch: median (min..max) | per-run medians | jdiff images/s | PyTorch images/s |",
            "|---|---|---|---|---|---|"]
  for cell, c in torch.items():
    r = c["jdiff_over_torch"]
    lines.append(f"| {cell} | {r['n']} | {r['median']:.2f} ({r['min']:.2f}..{r['max']:.2f}) | "
                 + ", ".join(f"{s['median']:.2f}" for s in c["per_run"].values())
                 + f" | {c['jdiff_images_per_s']['median']:.2f} ({c['jdiff_images_per_s']['min']:.2f}.."
                 f"{c['jdiff_images_per_s']['max']:.2f}) | {c['torch_images_per_s']['median']:.2f} "
                 f"({c['torch_images_per_s']['min']:.2f}..{c['torch_images_per_s']['max']:.2f}) |")
  for title, (cells, runs) in [
      ("Adaptive-depth sampling, Ho et al.'s net, T = 20, batch 8 (`bench_depth_ho_cpu/`)",
       (ho_sampling, ho_sampling_runs)),
      ("Adaptive-depth sampling, the quickstart net, T = 100, batch 32 (`bench_depth_quickstart_cpu/`)",
       (quick, quick_runs))]:
    lines += ["", f"## {title}", "",
              f"Runs: {', '.join(runs)}. The JSONs keep each run's median, min and max over its "
              "rounds, not the rounds: a cell is the median of the runs' medians (each run's in "
              "brackets when there are several) and min..max over every round of every run.", "",
              "| cell | FLOPs saved | rounds | time saved | time saved / FLOPs saved |",
              "|---|---|---|---|---|"]
    for cell, c in cells.items():
      flops = sorted(set(round(v, 3) for v in c["flops_saved"].values()))
      lines.append(f"| {cell} | {', '.join(f'{v:.1%}' for v in flops)} | {c['time_saved']['rounds']} | "
                   f"{_fmt_pooled(c['time_saved'], '.1%')} | "
                   f"{_fmt_pooled(c['time_saved_over_flops_saved'], '.2f')} |")
    lines += ["", _summary("All runs", cells)]
    if len(runs) > 1:
      for run in runs:
        alone, _ = depth_sampling_cells(run)
        lines += ["", _summary(f"{run} alone", alone)]
  lines += ["", "## Adaptive-depth training step, Ho et al.'s net, batch 8 (`bench_depth_ho_cpu/`)", "",
            f"Runs: {', '.join(training_runs)}. Step time / full depth's, host dispatch: median of "
            "the runs' medians (each run's in brackets), min..max over every round.", "",
            "| cell | FLOPs / full depth's | rounds | time / full depth's | time share / FLOP share | `lax.switch` step / host-dispatched |",
            "|---|---|---|---|---|---|"]
  for cell, c in training.items():
    if "time_ratio" not in c:
      continue
    share = c["time_ratio_over_flops_ratio"]
    switch = _fmt_pooled(c["switch_over_host"], ".2f") if "switch_over_host" in c else "-"
    lines.append(f"| {cell} | {c['flops_ratio']:.3f} | {c['time_ratio']['rounds']} | "
                 f"{_fmt_pooled(c['time_ratio'], '.3f')} | {share['median_of_run_medians']:.2f} "
                 f"({share['min']:.2f}..{share['max']:.2f}) | {switch} |")
  if "switch_over_host" in training["depth 0"]:
    lines.append(f"| depth 0 (full) | 1.000 | {training['depth 0']['switch_over_host']['rounds']} | "
                 f"1 | 1 | {_fmt_pooled(training['depth 0']['switch_over_host'], '.2f')} |")
  full = training["full depth"]
  net3 = training["depth 3"]["time_ratio_net_of_update_over_flops_ratio"]["run_medians"].values()
  lines += ["", f"Full-depth step (run medians): {min(full['host_step_median_s_per_run'].values()):.2f}.."
            f"{max(full['host_step_median_s_per_run'].values()):.2f} s; the optimizer and EMA update "
            f"alone: {min(full['update_median_s_per_run'].values()):.3f}.."
            f"{max(full['update_median_s_per_run'].values()):.3f} s; depth 3 net of the update, "
            f"time share / FLOP share (run medians): {min(net3):.2f}..{max(net3):.2f}."]
  lines += ["", "## S-step samplers against (S / T) x DDPM-1000 (`bench_samplers_cpu/`)", ""]
  for name, s in samplers.items():
    lines.append(f"{name}: {s['rows']} samplers, {s['rounds']} rounds: medians "
                 f"{s['row_medians']['min']:.2f}..{s['row_medians']['max']:.2f} (median "
                 f"{s['row_medians']['median']:.2f}); single rounds {s['every_round_min']:.2f}.."
                 f"{s['every_round_max']:.2f}.")
  with open(os.path.join(HERE, "bench_distributions.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
