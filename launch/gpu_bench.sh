#!/usr/bin/env bash
# Every --mode=bench (core, precision, samplers, depth) on the Ho et al. CIFAR-10 U-Net
# (configs/cifar10_ddpm.py, 35.7M parameters) on one GPU, sized to finish in under 8 minutes on
# an H200, plus a 20-step --mode=train on synthetic data (a generated .npz). Writes each bench's
# JSON and a log under OUT (default /tmp/gpu_bench), and OUT/summary.json gathering them.
# Needs no TensorFlow and no clu; needs ml_collections (pure Python): where it is missing, carry
# its wheel in .whl/ (see docs/launching.md, "Benchmarks on a GPU"); this script installs .whl/*.whl
# into /tmp/site first when that folder exists.
#
#   bash launch/gpu_bench.sh [OUT]
#   CONFIG=configs/quickstart.py:tiny SMOKE=1 TIMEOUT_SCALE=10 \
#     ENTRY=launch/without_tensorflow.py bash launch/gpu_bench.sh /tmp/gb   # a CPU smoke run
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/gpu_bench}"
CONFIG="${CONFIG:-configs/cifar10_ddpm.py}"
PYTHON="${PYTHON:-python3}"
# ENTRY=launch/without_tensorflow.py runs it with TensorFlow and clu hidden (the smoke test here).
read -r -a ENTRY <<< "${ENTRY:--m jdiff.main}"
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# Sizes: the reference numbers are 2.7k train img/s at batch 128 (TPU v3-8) and 256 samples x
# 1000 steps in 17 s. The depth bench samples over T_DEPTH = 250 steps (k(t)'s shares as at
# T = 1000 to within a step) to fit: it compiles 4 per-depth train steps, a lax.switch step
# and 5 samplers. The time limits (470 s in all) are estimates, not yet run on a GPU: a part
# over its limit is stopped, reported, and the others still run.
if [ -n "${SMOKE:-}" ]; then
  TRAIN_BATCH=8; SAMPLE_BATCH=4; T=20; T_DEPTH=20; ROUNDS=2; TRAIN_STEPS=4
else
  TRAIN_BATCH=128; SAMPLE_BATCH=256; T=1000; T_DEPTH=250; ROUNDS=2; TRAIN_STEPS=20
fi

status=0
run() {  # run NAME TIMEOUT_S ARGS...: one jdiff.main call, its log in OUT/NAME.log
  local name="$1" limit=$(( $2 * ${TIMEOUT_SCALE:-1} )); shift 2
  local start=$SECONDS
  timeout "$limit" "$PYTHON" "${ENTRY[@]}" --config="$CONFIG" --workdir="$OUT/$name" "$@" \
    > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s (log $OUT/$name.log)"
  [ $rc -eq 0 ] || status=1
}

run core 120 --mode=bench --config.bench.kind=core --config.bench.batch_sizes="(1,32,128)" \
  --config.training.batch_size=$TRAIN_BATCH --config.sampling.batch_size=$SAMPLE_BATCH \
  --config.diffusion.num_timesteps=$T --config.bench.num_iters=5
run precision 100 --mode=bench --config.bench.kind=precision \
  --config.training.batch_size=$TRAIN_BATCH --config.bench.num_iters=5
run samplers 50 --mode=bench --config.bench.kind=samplers --config.sampling.batch_size=64 \
  --config.diffusion.num_timesteps=$T --config.bench.samplers="('respaced','ddim')" \
  --config.bench.num_iters=2
run depth 150 --mode=bench --config.bench.kind=depth --config.depth.training=bucketed \
  --config.depth.power=2.0 --config.bench.skip_types="('zero',)" \
  --config.training.batch_size=$TRAIN_BATCH --config.sampling.batch_size=64 \
  --config.diffusion.num_timesteps=$T_DEPTH --config.bench.num_iters=$ROUNDS

# --mode=train on synthetic data: random uint8 images in an .npz (no TFDS).
"$PYTHON" - "$OUT/synthetic.npz" <<'PY'
import sys
import numpy as np
np.savez(sys.argv[1], images=np.random.default_rng(0).integers(0, 256, (512, 32, 32, 3), np.uint8))
PY
run train 50 --mode=train --config.data.source=npz --config.data.path="$OUT/synthetic.npz" \
  --config.data.image_size=32 --config.data.num_channels=3 \
  --config.training.batch_size=$TRAIN_BATCH --config.training.num_steps=$TRAIN_STEPS \
  --config.training.log_every=5 --config.training.checkpoint_every=$TRAIN_STEPS \
  --config.evaluation.metrics="('bpd',)"  # RGB data: the smoke config's digits metric would refuse it

"$PYTHON" - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
summary = {os.path.relpath(path, out): json.load(open(path))
           for path in sorted(glob.glob(os.path.join(out, "*", "bench*.json")))}
metrics = os.path.join(out, "train", "metrics.jsonl")
if os.path.exists(metrics):
  summary["train/metrics.jsonl"] = [json.loads(line) for line in open(metrics)]
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print("wrote", os.path.join(out, "summary.json"), "with", sorted(summary))
PY
exit $status
