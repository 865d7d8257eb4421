"""Anchors of the digits tables (depth, objectives, surrogate, quickstart): FID, KID and Digits FD
of 256 *real* digits and of 256 uniform-noise images, scored exactly as those tables' rows (256
samples a row; FID / KID on the FID Inception weights, tf1 preprocessing, against all 1,797
scikit-learn digits; Digits FD against the digits classifier's training split), so that a row's
score can be read against what real digits get at the same N.

  WEIGHTS=<file.pth> python docs/results/digits_anchors/anchors.py   # from the repository root
      # WEIGHTS: the FID Inception weights, as for docs/results/cpu_tables.sh (unset: pytorch-fid's,
      # downloaded once). 7 min on one shared core when the Inception features of the 1,797
      # reference digits are cached (a first run computes and caches them; the tables share them).

The tables' FID / KID reference is the whole data set, and the digits models are trained on the
whole data set, so no real digit is held out from it. The real anchors are therefore disjoint
sets of 256 digits drawn from the reference itself (what a model that reproduced its training
digits would score), six of them, so their spread shows the noise of a 256-sample score:
  - "held out A": 256 of the 359 digits that the Digits FD classifier holds out (its reference is
    its training split, so for Digits FD these are unseen; for FID / KID they are in the reference);
  - "train B1".."train B5": five disjoint sets of 256 from the classifier's training split (in
    every reference).
To show how much being in the FID / KID reference lowers those scores, "overlap check" scores A
and B1 again against the other 1,541 digits of the 1,797 (a different reference, so these numbers are not
anchors of the tables; Inception features taken from the reference's cached features).

Writes docs/results/digits_anchors/anchors.json.
"""
import json
import os
import time

import numpy as np

from jdiff import config_lib
from jdiff import data as data_lib
from jdiff.drivers import evaluate as evaluate_lib
from jdiff.evaluation import cache_dir
from jdiff.evaluation import digits_fd
from jdiff.evaluation import metrics as metrics_lib

HERE = os.path.dirname(os.path.abspath(__file__))
N = 256
START = time.time()

config = config_lib.load_config("configs/quickstart.py")
config.evaluation.metrics = ("fid", "kid", "digits_fd")
config.evaluation.inception_weights = os.environ.get("WEIGHTS", "")
config.evaluation.num_samples = N

digits = data_lib.load_digits()  # uint8 [1797, 8, 8, 1], the tables' reference, in its order
# The Digits FD classifier's split (digits_fd.load_digits_split), as indices into `digits`.
settings = digits_fd.TRAINING_SETTINGS
order = np.random.default_rng(settings["seed"]).permutation(len(digits))
num_held_out = int(round(settings["held_out_fraction"] * len(digits)))
held_out, train = order[:num_held_out], order[num_held_out:]
_, _, held_out_images, _ = digits_fd.load_digits_split()
# (load_digits rounds 0..16 to 0..255; the classifier reads 0..16 scaled to [-1, 1].)
assert np.allclose(data_lib.to_float(digits[held_out]), held_out_images, atol=2 / 255), \
    "the classifier's held-out split is not where this script expects it"

sets = {"held out A": held_out[:N]}
for i in range(5):
  sets[f"train B{i + 1}"] = train[i * N:(i + 1) * N]
assert len(np.unique(np.concatenate(list(sets.values())))) == 6 * N  # disjoint
descriptions = {
    "held out A": f"256 real digits: the first 256 of the Digits FD classifier's {len(held_out)} "
                  "held-out digits (not in the Digits FD reference; in the FID / KID reference)",
    **{f"train B{i + 1}": f"256 real digits: the classifier's training-split digits "
                          f"{i * N}-{(i + 1) * N - 1} (in every reference)" for i in range(5)},
    "uniform noise": "256 images of uniform uint8 noise (numpy default_rng(0))",
}


# Whether the reference's Inception features were already cached (they dominate the run time).
_, _TAG = evaluate_lib._inception(config)  # pylint: disable=protected-access
REFERENCE_CACHED = os.path.exists(os.path.join(
    cache_dir(), "features",
    f"{evaluate_lib._data_key(config, 'train')}-{_TAG}.npz"))  # pylint: disable=protected-access


def scores_of(images_uint8):
  scores = evaluate_lib.inception_scores(config, images_uint8)
  result = {key: scores[key] for key in ("fid", "kid", "kid_std", "kid_interval",
                                         "kid_subset_size", "fid_preprocessing", "fid_reference")}
  result["digits_fd"] = digits_fd.digits_frechet_distance(data_lib.to_float(images_uint8))
  return result


results = {"num_samples": N, "reference": {
    "fid_kid": "all 1,797 scikit-learn digits (digits-train-8px1c), as the tables",
    "digits_fd": f"the digits classifier's training split ({len(train)} digits), as the tables"},
    "anchors": {}}
for name, indices in sets.items():
  results["anchors"][name] = {"what": descriptions[name],
                              **scores_of(digits[indices])}
noise = np.random.default_rng(0).integers(0, 256, (N, 8, 8, 1), dtype=np.uint8)
results["anchors"]["uniform noise"] = {"what": descriptions["uniform noise"], **scores_of(noise)}
for name, row in results["anchors"].items():
  interval = row["kid_interval"]["ci95"]
  print(f"{name}: FID {row['fid']:.2f}  KID x1e3 {1e3 * row['kid']:.2f} ± {1e3 * row['kid_std']:.2f} "
        f"(95% interval {1e3 * interval[0]:.2f}..{1e3 * interval[1]:.2f})  Digits FD "
        f"{row['digits_fd']:.3f}", flush=True)

real = [row for name, row in results["anchors"].items() if name != "uniform noise"]
results["real_summary"] = {
    key: {"median": float(np.median([row[key] for row in real])),
          "min": float(min(row[key] for row in real)),
          "max": float(max(row[key] for row in real)), "sets": len(real)}
    for key in ("fid", "kid", "digits_fd")}
intervals = [row["kid_interval"]["ci95"] for row in real]
results["real_summary"]["kid_interval_ci95"] = {
    "lowest_lower": float(min(lo for lo, _ in intervals)),
    "highest_upper": float(max(hi for _, hi in intervals)),
    "half_width_min": float(min((hi - lo) / 2 for lo, hi in intervals)),
    "half_width_max": float(max((hi - lo) / 2 for lo, hi in intervals)),
    "sets_excluding_0": int(sum(lo > 0 or hi < 0 for lo, hi in intervals))}
# Digits FD of the in-reference sets only (A is held out from the Digits FD reference).
in_reference = [results["anchors"][f"train B{i + 1}"]["digits_fd"] for i in range(5)]
results["real_summary"]["digits_fd_in_reference_B1_B5"] = {
    "median": float(np.median(in_reference)), "min": float(min(in_reference)),
    "max": float(max(in_reference)), "sets": 5}

# Overlap check: A and B1 against the other 1,541 digits (not the tables' reference).
variables, tag = evaluate_lib._inception(config)  # pylint: disable=protected-access
reference_pool3 = evaluate_lib.reference_inception_features(config, variables, tag, "train")["pool3"]
results["overlap_check"] = {}
for name in ("held out A", "train B1"):
  inside = np.zeros(len(digits), bool)
  inside[sets[name]] = True
  mine, others = reference_pool3[inside], reference_pool3[~inside]
  kid, kid_std = metrics_lib.kernel_inception_distance(
      mine, others, config.evaluation.kid_subsets, config.evaluation.kid_subset_size, seed=config.seed)
  results["overlap_check"][name] = {
      "reference": f"the other {len(others)} digits",
      "fid": metrics_lib.frechet_distance(*metrics_lib.feature_statistics(mine),
                                          *metrics_lib.feature_statistics(others)),
      "kid": kid, "kid_std": kid_std,
      "kid_interval": metrics_lib.kid_with_interval(mine, others, seed=config.seed)}
  row = results["overlap_check"][name]
  print(f"overlap check, {name} against the other {len(others)}: FID {row['fid']:.2f}  "
        f"KID x1e3 {1e3 * row['kid']:.2f}", flush=True)

results["wall_clock_seconds"] = time.time() - START
results["reference_features"] = ("cached before this run" if REFERENCE_CACHED else
                                  "computed in this run (cached afterwards)")
with open(os.path.join(HERE, "anchors.json"), "w") as f:
  json.dump(results, f, indent=1)
