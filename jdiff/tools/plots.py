"""Speed/quality trade-off plots (PNG), e.g. FID against network evaluations or seconds.

  python -m jdiff.tools.plots --metrics='workdirs/*/eval/*/step_*/metrics.json' \\
      --x=network_evaluations --y=fid --out=tradeoff.png --log_x

Each metrics.json (written by --mode=evaluate) is one point; points of the same sampler family
(its "curve", e.g. "DDIM eta=0.0") form a curve, prefixed by the workdir when the files come
from several workdirs. Any numeric key of metrics.json can be an axis (seconds_per_sample,
digits_fd, inception_score, kid, bits_per_dim, ...). --metrics may be repeated; arguments after
the flags are more metrics files (so an unquoted glob that the shell expands works too). A bad
flag, a missing file or a key that is not a number in every file: one line `error: ...`, exit 2.
"""

import glob
import json
import os
import sys
from typing import List, Mapping, Sequence

import numpy as np
from absl import app, flags
# A bare Figure renders with the Agg backend and leaves pyplot's global state (and any display)
# alone.
from matplotlib.figure import Figure

from jdiff import files
from jdiff.tools import cli

FLAGS = flags.FLAGS


def define_flags():
  """The program's flags (not defined on import: notebooks and tests import plot_tradeoff)."""
  flags.DEFINE_multi_string(
      "metrics", None, "metrics.json files (of --mode=evaluate) or glob patterns (quote them); "
      "repeat the flag or list more files after the flags.")
  flags.DEFINE_string("x", "network_evaluations", "The cost axis: a numeric key of metrics.json.")
  flags.DEFINE_string("y", "fid", "The quality axis: a numeric key of metrics.json.")
  flags.DEFINE_string("out", "tradeoff.png", "The PNG written.")
  flags.DEFINE_string("title", "", "Plot title (default: '<y> vs <x>').")
  flags.DEFINE_bool("log_x", False, "Logarithmic x axis.")
  flags.mark_flags_as_required(["metrics"])


def plot_tradeoff(runs: Sequence[Mapping], x_key: str, y_key: str, path: str, title: str = "",
                  log_x: bool = False) -> str:
  """Draws y_key (quality, e.g. "fid") against x_key (cost, e.g. "nfe" or "seconds") to a PNG.

  runs: dicts with a "label" and values under x_key and y_key, each a number or a list of
  numbers. Runs sharing a label form one curve, drawn in x order. Returns path.
  """
  curves = {}
  for run in runs:
    if "label" not in run or x_key not in run or y_key not in run:
      raise ValueError(f"each run needs 'label', {x_key!r} and {y_key!r}; got keys {sorted(run)}")
    xs, ys = np.atleast_1d(run[x_key]).astype(float), np.atleast_1d(run[y_key]).astype(float)
    if xs.shape != ys.shape:
      raise ValueError(f"run {run['label']!r}: {len(xs)} {x_key} values but {len(ys)} {y_key} values")
    points = curves.setdefault(str(run["label"]), [])
    points.extend(zip(xs, ys))
  figure = Figure(figsize=(6, 4.5), dpi=120)
  axes = figure.subplots()
  for label, points in curves.items():
    xs, ys = zip(*sorted(points))
    axes.plot(xs, ys, marker="o", label=label)
  if log_x:
    axes.set_xscale("log")
  axes.set_xlabel(x_key)
  axes.set_ylabel(y_key)
  axes.set_title(title or f"{y_key} vs {x_key}")
  axes.grid(True, alpha=0.3)
  axes.legend()
  figure.tight_layout()
  files.write_with(path, lambda f: figure.savefig(f, format="png"))
  return path


def runs_from_metrics_files(paths: Sequence[str]) -> List[dict]:
  """metrics.json files -> runs for plot_tradeoff, labelled by curve (and workdir if several)."""
  runs = []
  for path in paths:
    with open(path) as f:
      metrics = json.load(f)
    workdir = os.path.abspath(path).split(os.sep + "eval" + os.sep)[0]
    runs.append(dict(metrics, workdir=os.path.basename(workdir),
                     label=metrics.get("curve", metrics.get("name", path))))
  if len({run["workdir"] for run in runs}) > 1:
    for run in runs:
      run["label"] = f"{run['workdir']}: {run['label']}"
  return runs


def main(argv) -> int:
  patterns = list(FLAGS.metrics) + list(argv[1:])
  paths = sorted({path for pattern in patterns for path in (glob.glob(pattern) or [pattern])})
  missing = [path for path in paths if not os.path.isfile(path)]
  if missing:
    print(f"error: --metrics: no file {missing[0]} (give metrics.json files of --mode=evaluate)",
          file=sys.stderr)
    return 2
  runs = runs_from_metrics_files(paths)
  for flag, key in (("x", FLAGS.x), ("y", FLAGS.y)):
    lacking = [run["name"] for run in runs if not _is_number(run.get(key))]
    if lacking:
      keys = sorted(k for k, v in runs[0].items() if _is_number(v))
      print(f"error: --{flag}={key}: not a number in the metrics of {lacking[0]}; numeric keys "
            f"there: {keys}", file=sys.stderr)
      return 2
  path = plot_tradeoff(runs, FLAGS.x, FLAGS.y, FLAGS.out, FLAGS.title, FLAGS.log_x)
  print(f"plot: {path} ({len(runs)} points)")
  return 0


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
