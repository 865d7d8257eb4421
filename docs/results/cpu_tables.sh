#!/usr/bin/env bash
# The CPU-scale paper tables of docs/results/, from scratch, in the order they were made.
#
#   bash docs/results/cpu_tables.sh [samplers|depth|surrogate|objectives|anchors ...]   # default: all
#
#   DATA_DIR=<folder> WEIGHTS=<file.pth> bash docs/results/cpu_tables.sh ...
#
# Needs the repository's venv (bash launch/local.sh makes it) and two locations:
#   DATA_DIR  a folder holding cifar10_exact_subset.npz: exact CIFAR-10 pixels, `train_x` uint8
#             (4660, 32, 32, 3) = the first 932 images of each official python batch file
#             (only the samplers table reads it)
#   WEIGHTS   the FID Inception-v3 weights in pytorch-fid's format
#             (pt_inception-2015-12-05-6726825d.pth, or a file converted to its layout)
# Every command resumes: training from its last checkpoint, evaluation from the kept samples (and
# scores) of each row. Wall-clock on 2 CPU cores: see each table's page.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
need() {  # need VARIABLE WHAT: stop with one line when the environment does not set it
  [ -n "${!1:-}" ] || { echo "cpu_tables.sh: set $1 to $2" >&2; exit 2; }
}
need WEIGHTS "the FID Inception-v3 weights .pth (pytorch-fid's format)"
RUNS="${RUNS:-workdirs/cpu_tables}"
# The exact subset instead of configs/cifar10_cpu.py's TFDS default (reference_split names the
# cached reference statistics: "train", as when the tables were made).
SUBSET=(--config.data.source=npz --config.data.npz_key=train_x
        --config.evaluation.reference_split=train)
export TF_CPP_MIN_LOG_LEVEL=3

samplers() {
  need DATA_DIR "the folder that holds cifar10_exact_subset.npz"
  # The CPU CIFAR-10 model: 1,500 steps on the 4,660 images of the exact subset.
  "$PYTHON" -m jdiff.main --config=configs/cifar10_cpu.py --workdir="$RUNS/cifar10_cpu" \
      --mode=train "${SUBSET[@]}" --config.data.path="$DATA_DIR/cifar10_exact_subset.npz"
  # FID / KID reference: the first 1,000 of those training images (all 4,660 cost ~4x the
  # Inception time of the whole table on 2 cores).
  local reference="$RUNS/cifar10_train_first1000.npz"
  "$PYTHON" -c "import numpy as np, sys; np.savez(sys.argv[2], train_x=np.load(sys.argv[1])['train_x'][:1000])" \
      "$DATA_DIR/cifar10_exact_subset.npz" "$reference"
  "$PYTHON" -m jdiff.tools.paper_tables --table=samplers --config=configs/cifar10_cpu.py \
      --workdir="$RUNS/cifar10_cpu" --steps=10,20,50,100 --num_samples=100 \
      --label="CPU-scale: 1,500-step CIFAR-10 model, 100 samples a row" \
      "${SUBSET[@]}" --config.data.path="$reference" \
      --config.evaluation.inception_weights="$WEIGHTS"
}

depth() {
  # Adaptive depth on the 8x8 digits: the full-depth model and one model per skip type trained
  # with random depth (2,500 steps each), each c sampled with DDPM-1000. c = 1 and 3 are left
  # out for time (each row is 2-6 min here); drop --powers for the paper's 0, 1, 2, 3, 5.
  "$PYTHON" -m jdiff.tools.paper_tables --table=depth --config=configs/quickstart_adaptive.py \
      --workdir="$RUNS/depth_digits" --skip_types=zero,duplicate,interpolate --powers=0,2,5 \
      --label="CPU-scale: 8x8 digits, 2,500-step models" \
      --config.evaluation.metrics=fid,kid,digits_fd --config.evaluation.inception_weights="$WEIGHTS"
}

surrogate() {
  # Algorithm 4 on the digits: the quickstart DDPM from the 4x4 DDPM surrogate (DDPM-16's
  # analogue) and from the SNGAN surrogate; both surrogates are trained first if missing.
  # SURROGATE_KINDS="sngan" runs one of them.
  for kind in ${SURROGATE_KINDS:-ddpm sngan}; do
    local surrogate_config=configs/quickstart_ddpm4.py
    [[ $kind == sngan ]] && surrogate_config=configs/quickstart_gan.py
    "$PYTHON" -m jdiff.tools.paper_tables --table=surrogate --config=configs/surrogate_sweep.py \
        --workdir="$RUNS/quickstart" --config.surrogate.kind=$kind \
        --config.surrogate.config=$surrogate_config \
        --config.surrogate.workdir="$RUNS/$(basename $surrogate_config .py)" \
        --label="CPU-scale: 8x8 digits, 2,500-step models" \
        --config.evaluation.metrics=fid,kid,digits_fd --config.evaluation.inception_weights="$WEIGHTS"
    # Both kinds write tables/surrogate.*: keep each under its own name.
    for ext in md json png; do
      cp "$RUNS/quickstart/tables/surrogate.$ext" "$RUNS/quickstart/tables/surrogate-$kind.$ext"
    done
  done
}

objectives() {
  "$PYTHON" -m jdiff.tools.paper_tables --table=objectives --config=configs/quickstart.py \
      --workdir="$RUNS/objectives_digits" --label="CPU-scale: 8x8 digits, 2,500-step models" \
      --config.evaluation.metrics=fid,kid,digits_fd --config.evaluation.inception_weights="$WEIGHTS"
}

anchors() {
  # Real-data and noise anchors of the tables, scored as their rows: 100 real CIFAR-10 images
  # against the sampler table's reference (needs DATA_DIR), and 256 real digits against the
  # digits tables' (depth, surrogate, objectives, quickstart). ANCHORS="digits" runs one of them.
  for set in ${ANCHORS:-cifar10 digits}; do
    if [[ $set == cifar10 ]]; then
      need DATA_DIR "the folder that holds cifar10_exact_subset.npz"
      RUNS="$RUNS" DATA_DIR="$DATA_DIR" WEIGHTS="$WEIGHTS" "$PYTHON" docs/results/samplers_cifar10_cpu/anchors.py
    else
      WEIGHTS="$WEIGHTS" "$PYTHON" docs/results/digits_anchors/anchors.py
    fi
  done
}

for table in "${@:-samplers depth surrogate objectives anchors}"; do
  for name in $table; do "$name"; done
done
