"""Speed/quality trade-off plots (PNG), e.g. FID against sampling steps or seconds."""

import os
from typing import Mapping, Sequence

import numpy as np
# A bare Figure renders with the Agg backend and leaves pyplot's global state (and any display)
# alone.
from matplotlib.figure import Figure


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
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path)
  return path
