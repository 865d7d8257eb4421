#!/usr/bin/env bash
# Local runs on this machine's CPU (or GPU, if jax finds one).
#   bash launch/local.sh          create .venv if missing, install, train the quickstart, sample a grid
#   bash launch/local.sh test     the test suite (extra pytest arguments are passed on)
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

workdir="${WORKDIR:-workdirs/quickstart}"
.venv/bin/python -m jdiff.main --config=configs/quickstart.py --workdir="$workdir" --mode=train
.venv/bin/python -m jdiff.main --config=configs/quickstart.py --workdir="$workdir" --mode=sample
echo "sample grid: $workdir/samples/grid.png"
