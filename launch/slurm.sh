#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node (it drives all of that node's GPUs),
# the first node of the allocation coordinating jax.distributed. Writes an sbatch script next to
# the job's logs and submits it.
# Evaluation (--mode=evaluate, --mode=reference_stats) and the paper tables
# (python -m jdiff.tools.paper_tables) run unchanged in the same processes, sharded over every
# device of every process: launch/README.md (commands, expected wall-clock).
#
# Usage: bash launch/slurm.sh --nodes=N --gpus-per-node=G --config=FILE --workdir=DIR [FLAGS]
#            [--config.x=y ...] [-- --config.x=y ...]
# Run with --help for the flags.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash launch/slurm.sh --nodes=N --gpus-per-node=G --config=FILE --workdir=DIR [FLAGS]
           [--config.x=y ...] [-- --config.x=y ...]

Writes LOG_DIR/JOB_NAME-TIME.sbatch and submits it with sbatch. The job starts one
`python -m jdiff.main --mode=train --config.distributed=True` per node with srun, with
JDIFF_COORDINATOR_ADDRESS (first node of the allocation), JDIFF_NUM_PROCESSES and
JDIFF_PROCESS_ID set for jax.distributed.initialize(). Its output (all nodes, lines prefixed
with the process id) goes to LOG_DIR/JOB_NAME-JOBID.out. SLURM sends SIGTERM 2 minutes before
the time limit: jdiff saves a checkpoint and exits; `sbatch` the same file again to resume.

Flags (each also from the environment variable after it; a flag wins over the variable):
  --nodes=N              JDIFF_SLURM_NODES          required
  --gpus-per-node=G      JDIFF_SLURM_GPUS_PER_NODE  required
  --config=FILE          JDIFF_SLURM_CONFIG         required, e.g. configs/cifar10_ddpm.py
  --workdir=DIR          JDIFF_SLURM_WORKDIR        required; on a filesystem every node sees
  --partition=P          JDIFF_SLURM_PARTITION      default: the cluster's
  --time=T               JDIFF_SLURM_TIME           e.g. 24:00:00; default: the partition's
  --account=A            JDIFF_SLURM_ACCOUNT
  --cpus-per-task=C      JDIFF_SLURM_CPUS_PER_TASK  CPUs for each node's process (data loading)
  --job-name=NAME        JDIFF_SLURM_JOB_NAME       default: jdiff-<config file name>
  --log-dir=DIR          JDIFF_SLURM_LOG_DIR        default: WORKDIR/slurm
  --python=PATH          JDIFF_SLURM_PYTHON         default: this repo's .venv/bin/python; the
                                                    nodes must see it at the same path, and it
                                                    needs GPU jax: pip install -e . "jax[cuda12]"
  --port=PORT            JDIFF_SLURM_PORT           coordinator port; default: 20000 + job id
                                                    mod 20000, so jobs sharing a node differ
  --sbatch-option=OPT                               extra #SBATCH line, repeatable, e.g.
                                                    --sbatch-option=--qos=high
  --dry-run                                         print the commands and the script, run none
  -h, --help

Any --config.x=y, and everything after --, is passed on to jdiff.main.

Example:
  bash launch/slurm.sh --nodes=2 --gpus-per-node=8 --partition=gpu --time=24:00:00 \
      --config=configs/cifar10_ddpm.py --workdir=/shared/runs/cifar10 -- --config.training.batch_size=256
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---------------------------------------------------------------------------------------------
# Flags. Values come from the environment first, then the command line.
nodes=${JDIFF_SLURM_NODES:-}
gpus_per_node=${JDIFF_SLURM_GPUS_PER_NODE:-}
config=${JDIFF_SLURM_CONFIG:-}
workdir=${JDIFF_SLURM_WORKDIR:-}
partition=${JDIFF_SLURM_PARTITION:-}
time_limit=${JDIFF_SLURM_TIME:-}
account=${JDIFF_SLURM_ACCOUNT:-}
cpus_per_task=${JDIFF_SLURM_CPUS_PER_TASK:-}
job_name=${JDIFF_SLURM_JOB_NAME:-}
log_dir=${JDIFF_SLURM_LOG_DIR:-}
python=${JDIFF_SLURM_PYTHON:-}
port=${JDIFF_SLURM_PORT:-}
sbatch_options=()
dry_run=0
overrides=()

value_flags=" --nodes --gpus-per-node --config --workdir --partition --time --account \
--cpus-per-task --job-name --log-dir --python --port --sbatch-option "
while [ $# -gt 0 ]; do
  arg=$1
  shift
  # `--flag value` is read as `--flag=value`.
  if [[ $value_flags == *" $arg "* ]]; then
    [ $# -gt 0 ] || die "$arg needs a value"
    arg="$arg=$1"
    shift
  fi
  case $arg in
    --) overrides+=("$@"); break ;;
    --config.*) overrides+=("$arg") ;;
    --nodes=*) nodes=${arg#*=} ;;
    --gpus-per-node=*) gpus_per_node=${arg#*=} ;;
    --config=*) config=${arg#*=} ;;
    --workdir=*) workdir=${arg#*=} ;;
    --partition=*) partition=${arg#*=} ;;
    --time=*) time_limit=${arg#*=} ;;
    --account=*) account=${arg#*=} ;;
    --cpus-per-task=*) cpus_per_task=${arg#*=} ;;
    --job-name=*) job_name=${arg#*=} ;;
    --log-dir=*) log_dir=${arg#*=} ;;
    --python=*) python=${arg#*=} ;;
    --port=*) port=${arg#*=} ;;
    --sbatch-option=*) sbatch_options+=("${arg#*=}") ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done

require() {  # require VALUE FLAG ENV_VAR [HINT]
  [ -n "$1" ] || die "$2 is required (or set $3)${4:+; $4}"
}
positive() {  # positive VALUE FLAG
  [[ -z $1 || $1 =~ ^[1-9][0-9]*$ ]] || die "$2=$1: must be a positive integer"
}
require "$nodes" --nodes JDIFF_SLURM_NODES
require "$gpus_per_node" --gpus-per-node JDIFF_SLURM_GPUS_PER_NODE
require "$config" --config JDIFF_SLURM_CONFIG "e.g. configs/cifar10_ddpm.py"
require "$workdir" --workdir JDIFF_SLURM_WORKDIR "a directory every node can see"
positive "$nodes" --nodes
positive "$gpus_per_node" --gpus-per-node
positive "$cpus_per_task" --cpus-per-task
positive "$port" --port

repo=$(cd "$(dirname "$0")/.." && pwd -P)
absolute() {  # a path from here, made absolute (the job runs in the repo, on other machines)
  case $1 in
    /*|gs://*) printf '%s' "$1" ;;
    *) printf '%s' "$PWD/$1" ;;
  esac
}
# The config: as given from here, or from the repo root; shown relative to the repo if inside it.
if [ -f "$config" ]; then
  config=$(absolute "$config")
elif [ -f "$repo/$config" ]; then
  config="$repo/$config"
else
  die "--config=$config: no such file"
fi
config=${config#"$repo"/}
workdir=$(absolute "$workdir")
log_dir=$(absolute "${log_dir:-$workdir/slurm}")
python=$(absolute "${python:-$repo/.venv/bin/python}")
job_name=${job_name:-jdiff-$(basename "$config" .py)}
if [ ! -x "$python" ]; then
  echo "warning: $python is not here; the job fails unless the nodes have it (see --python)" >&2
fi

# ---------------------------------------------------------------------------------------------
# The sbatch script.
sbatch_script() {
  local py
  py="$(q "$python") $(quote_words -m jdiff.main --config="$config" --workdir="$workdir" \
        --mode=train --config.distributed=True ${overrides[@]+"${overrides[@]}"})"
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$(q "$job_name")"
  echo "#SBATCH --nodes=$nodes"
  echo "#SBATCH --ntasks-per-node=1"
  echo "#SBATCH --gpus-per-node=$gpus_per_node"
  if [ -n "$cpus_per_task" ]; then echo "#SBATCH --cpus-per-task=$cpus_per_task"; fi
  if [ -n "$partition" ]; then echo "#SBATCH --partition=$(q "$partition")"; fi
  if [ -n "$time_limit" ]; then echo "#SBATCH --time=$(q "$time_limit")"; fi
  if [ -n "$account" ]; then echo "#SBATCH --account=$(q "$account")"; fi
  echo "#SBATCH --output=$(q "$log_dir/%x-%j.out")"
  # SIGTERM to the tasks 2 minutes before the time limit: jdiff checkpoints and exits 143.
  echo "#SBATCH --signal=TERM@120"
  local option
  for option in ${sbatch_options[@]+"${sbatch_options[@]}"}; do echo "#SBATCH $option"; done
  cat <<EOF
# Written by launch/slurm.sh. Submitting this file again resumes from the workdir's checkpoint.
set -euo pipefail
cd $(q "$repo")

# jax.distributed: process 0 runs on the first node of the allocation and coordinates.
mapfile -t hosts < <(scontrol show hostnames "\$SLURM_JOB_NODELIST")
export JDIFF_COORDINATOR_ADDRESS="\${hosts[0]}:${port:-\$((20000 + SLURM_JOB_ID % 20000))}"
export JDIFF_NUM_PROCESSES="\$SLURM_NNODES"
echo "job \$SLURM_JOB_ID: \$SLURM_NNODES nodes (\${hosts[*]}), coordinator \$JDIFF_COORDINATOR_ADDRESS"

# One task per node. JDIFF_PROCESS_ID is set inside each task (single quotes), from its own
# SLURM_PROCID. --kill-on-bad-exit: if one process dies, end the rest instead of leaving them
# waiting in a collective until the time limit.
# shellcheck disable=SC2016
srun --nodes="\$SLURM_NNODES" --ntasks="\$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 --label \\
  bash -c $(q "export JDIFF_PROCESS_ID=\$SLURM_PROCID; exec $py")
EOF
}

script_path="$log_dir/$job_name-$(date -u +%Y%m%d-%H%M%S).sbatch"
if [ "$dry_run" = 1 ]; then
  quote_words mkdir -p "$log_dir"; echo
  echo "cat > $(q "$script_path") <<'JDIFF_SBATCH_EOF'"
  sbatch_script
  echo "JDIFF_SBATCH_EOF"
  quote_words sbatch --parsable "$script_path"; echo
  exit 0
fi

# sbatch does not create the --output directory; without it the job's log is lost.
mkdir -p "$log_dir"
sbatch_script > "$script_path"
job_id=$(sbatch --parsable "$script_path")
job_id=${job_id%%;*}  # --parsable prints "id" or "id;cluster"
echo "submitted job $job_id ($nodes nodes x $gpus_per_node GPUs): $script_path"
echo "log:    $log_dir/$job_name-$job_id.out   (tail -f it)"
# A plain scancel allows only KillWait (30 s by default) between SIGTERM and SIGKILL.
echo "stop:   scancel --signal=TERM $job_id   (jdiff saves a checkpoint, then the job ends)"
