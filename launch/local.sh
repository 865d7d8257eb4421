#!/usr/bin/env bash
# Local runs on this machine's CPU (or GPU, if jax finds one).
#   bash launch/local.sh          create .venv if missing, install, train the quickstart, sample a grid
#   bash launch/local.sh test     the test suite (extra pytest arguments are passed on)
#   bash launch/local.sh vocoder  the CPU speech vocoder through its measured schedule, then 16 .wav
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import jdiff, pytest" 2>/dev/null \
   || [ setup.cfg -nt .venv/.jdiff-installed ]; then
  echo "installing jdiff and its dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch .venv/.jdiff-installed
fi

if [ "${1:-}" = "test" ]; then
  shift
  exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 "$@"
fi

if [ "${1:-}" = "vocoder" ]; then
  # configs/sc09_vocoder_cpu.py through the stages of docs/results/audio_cpu/'s run (~4 h on 2
  # cores): lr 2e-3 on whole clips, lr 2e-4, then random crops of 16 mel frames. Each stage
  # resumes the last (bitwise), so Ctrl-C and rerunning this continues where it stopped.
  workdir="${WORKDIR:-workdirs/sc09_vocoder_cpu}"
  jdiff=(.venv/bin/python -m jdiff.main --config=configs/sc09_vocoder_cpu.py --workdir="$workdir")
  "${jdiff[@]}" --mode=train --config.training.num_steps=1625
  "${jdiff[@]}" --mode=train --config.training.num_steps=4525 --config.training.learning_rate=2e-4
  "${jdiff[@]}" --mode=train --config.training.num_steps=20000 --config.training.learning_rate=2e-4 \
      --config.training.crop_mel_frames=16 --config.training.batch_size=32
  "${jdiff[@]}" --mode=sample --config.sampling.num_samples=16 --config.sampling.batch_size=16
  echo "16 clips re-synthesised from their mels: $workdir/samples/sample_*.wav, waveforms.png"
  exit 0
fi

workdir="${WORKDIR:-workdirs/quickstart}"
.venv/bin/python -m jdiff.main --config=configs/quickstart.py --workdir="$workdir" --mode=train
.venv/bin/python -m jdiff.main --config=configs/quickstart.py --workdir="$workdir" --mode=sample
echo "sample grid: $workdir/samples/grid.png"
