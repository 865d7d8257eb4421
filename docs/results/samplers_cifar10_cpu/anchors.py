"""Anchors of the CPU sampler table: FID / KID of 100 *real* CIFAR-10 images (and of 100
uniform-noise images) against the table's reference (the first 1,000 training images), scored
exactly as the table's rows, so a sampler's FID can be read against what 100 real images get.

  DATA_DIR=<folder> WEIGHTS=<file.pth> \
      python docs/results/samplers_cifar10_cpu/anchors.py [REFERENCE_NPZ]   # from the repository root
      # ~5 min on 2 cores. DATA_DIR, WEIGHTS: as for docs/results/cpu_tables.sh (the folder holding
      # cifar10_exact_subset.npz, uint8 train_x and test_x; the FID Inception weights; WEIGHTS unset:
      # pytorch-fid's, downloaded once). REFERENCE_NPZ: the table's data.path, the first 1,000
      # training images of the subset; default: where cpu_tables.sh writes it ($RUNS, default
      # workdirs/cpu_tables), written from the subset when missing.

Writes docs/results/samplers_cifar10_cpu/anchors.json.
"""
import json
import os
import sys

import numpy as np

from jdiff import config_lib
from jdiff.drivers import evaluate as evaluate_lib

HERE = os.path.dirname(os.path.abspath(__file__))
SUBSET = os.path.join(os.environ["DATA_DIR"], "cifar10_exact_subset.npz")
REFERENCE = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.environ.get("RUNS", "workdirs/cpu_tables"), "cifar10_train_first1000.npz")

config = config_lib.load_config("configs/cifar10_cpu.py")
config.data.path = REFERENCE
config.evaluation.metrics = ("fid", "kid")
config.evaluation.inception_weights = os.environ.get("WEIGHTS", "")
data = np.load(SUBSET)
if not os.path.exists(REFERENCE):
  os.makedirs(os.path.dirname(os.path.abspath(REFERENCE)), exist_ok=True)
  np.savez(REFERENCE, train_x=data["train_x"][:1000])
anchors = {
    "real train images 1000-1099 (not in the reference)": data["train_x"][1000:1100],
    "real train images 1100-1199 (not in the reference)": data["train_x"][1100:1200],
    "real test images 0-99": data["test_x"][:100],
    "uniform noise, 100 images": np.random.default_rng(0).integers(
        0, 256, (100, 32, 32, 3), dtype=np.uint8),
}
results = {}
for name, images in anchors.items():
  scores = evaluate_lib.inception_scores(config, images)
  results[name] = {key: scores[key] for key in ("fid", "kid", "kid_std", "fid_preprocessing")}
  print(f"{name}: FID {scores['fid']:.1f}  KID x1e3 {1e3 * scores['kid']:.1f} "
        f"± {1e3 * scores['kid_std']:.1f}", flush=True)
with open(os.path.join(HERE, "anchors.json"), "w") as f:
  json.dump(results, f, indent=1)
