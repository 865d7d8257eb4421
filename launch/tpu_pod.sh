#!/usr/bin/env bash
# Training on a Cloud TPU VM slice (one VM per 4 or 8 chips; a v4-32 has 4 of them, "workers").
# Every worker runs the same command; jax.distributed.initialize() (config.distributed=True)
# finds the other workers through the TPU metadata, so no coordinator address is needed here.
# Evaluation (--mode=evaluate, --mode=reference_stats) and the paper tables
# (python -m jdiff.tools.paper_tables) run unchanged in the same processes, sharded over every
# device of every process: launch/README.md (commands, expected wall-clock).
#
# Usage: bash launch/tpu_pod.sh [SUBCOMMAND] [FLAGS] [--config.x=y ...] [-- --config.x=y ...]
# Run with --help for the subcommands and flags.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash launch/tpu_pod.sh [SUBCOMMAND] [FLAGS] [--config.x=y ...] [-- --config.x=y ...]

Subcommands (default: all):
  all      up, train, then follow the logs (and --delete-after: delete the slice when it ends)
  up       create the TPU VM slice (or reuse it if it exists and is READY), copy the code
           (git ls-files: tracked plus untracked-but-not-ignored files) to every worker,
           install it there (uv-made Python venv at ~/jdiff-venv, pip install -e . "jax[tpu]")
  train    start `python -m jdiff.main --mode=train --config.distributed=True` on every worker
           under nohup (it keeps running when this script or the ssh connection ends)
  logs     follow the training log of one worker until that run ends (Ctrl-C stops following
           only; training goes on)
  status   the slice's state, and on every worker whether training runs or how it ended
  stop     SIGTERM the training on every worker: jdiff saves a checkpoint and exits 143;
           `train` again resumes from the workdir. The slice stays up (and bills).
  delete   delete the slice (asks to confirm; `stop` first to save a checkpoint)

Flags (each also from the environment variable after it; a flag wins over the variable):
  --project=ID              JDIFF_TPU_PROJECT          Google Cloud project
  --zone=ZONE               JDIFF_TPU_ZONE             e.g. us-central2-b
  --name=NAME               JDIFF_TPU_NAME             the TPU VM's name
  --accelerator-type=TYPE   JDIFF_TPU_ACCELERATOR_TYPE e.g. v4-32, v5litepod-16, v5p-32, v6e-16
  --runtime-version=V       JDIFF_TPU_RUNTIME_VERSION  TPU software version: tpu-ubuntu2204-base
                                                       (v4), v2-alpha-tpuv5-lite (v5e),
                                                       v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e)
  --bucket=gs://B[/prefix]  JDIFF_TPU_BUCKET           the workdir is gs://B[/prefix]/RUN_NAME
                                                       (all workers must see the same workdir)
  --run-name=RUN            JDIFF_TPU_RUN_NAME         default: the config's file name, no .py
  --config=FILE             JDIFF_TPU_CONFIG           a config inside this repo, e.g.
                                                       configs/cifar10_ddpm.py
  --python=VERSION          JDIFF_TPU_PYTHON           Python for the workers' venv (default 3.11)
  --log-worker=N            JDIFF_TPU_LOG_WORKER       worker whose log `logs` follows (default 0)
  --spot                    JDIFF_TPU_SPOT=1           create a Spot TPU VM (cheaper, preemptible)
  --delete-after                                       all/logs: delete the slice once training has
                                                       ended on every worker
  --dry-run                                            print every command (one a line,
                                                       shell-quoted), run none
  -h, --help

Any --config.x=y, and everything after --, is passed on to jdiff.main.

Needs: gcloud (logged in), and for --worker=all an ssh agent holding the key:
  ssh-add ~/.ssh/google_compute_engine

Example:
  bash launch/tpu_pod.sh --project=my-proj --zone=us-central2-b --name=jdiff-v4 \
      --accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base \
      --bucket=gs://my-bucket/jdiff --config=configs/cifar10_ddpm.py -- --config.training.batch_size=512
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---------------------------------------------------------------------------------------------
# Flags. Values come from the environment first, then the command line.
subcommand=""
project=${JDIFF_TPU_PROJECT:-}
zone=${JDIFF_TPU_ZONE:-}
name=${JDIFF_TPU_NAME:-}
accelerator_type=${JDIFF_TPU_ACCELERATOR_TYPE:-}
runtime_version=${JDIFF_TPU_RUNTIME_VERSION:-}
bucket=${JDIFF_TPU_BUCKET:-}
run_name=${JDIFF_TPU_RUN_NAME:-}
config=${JDIFF_TPU_CONFIG:-}
python_version=${JDIFF_TPU_PYTHON:-3.11}
log_worker=${JDIFF_TPU_LOG_WORKER:-0}
spot=${JDIFF_TPU_SPOT:-0}
delete_after=0
dry_run=0
overrides=()

value_flags=" --project --zone --name --accelerator-type --runtime-version --bucket --run-name \
--config --python --log-worker "
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
    --project=*) project=${arg#*=} ;;
    --zone=*) zone=${arg#*=} ;;
    --name=*) name=${arg#*=} ;;
    --accelerator-type=*) accelerator_type=${arg#*=} ;;
    --runtime-version=*) runtime_version=${arg#*=} ;;
    --bucket=*) bucket=${arg#*=} ;;
    --run-name=*) run_name=${arg#*=} ;;
    --config=*) config=${arg#*=} ;;
    --python=*) python_version=${arg#*=} ;;
    --log-worker=*) log_worker=${arg#*=} ;;
    --spot) spot=1 ;;
    --delete-after) delete_after=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    all|up|train|logs|status|stop|delete)
      [ -z "$subcommand" ] || die "two subcommands: $subcommand and $arg"
      subcommand=$arg ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done
subcommand=${subcommand:-all}

require() {  # require VALUE FLAG ENV_VAR [HINT]
  [ -n "$1" ] || die "$2 is required (or set $3)${4:+; $4}"
}
require "$project" --project JDIFF_TPU_PROJECT
require "$zone" --zone JDIFF_TPU_ZONE
require "$name" --name JDIFF_TPU_NAME
if [[ $subcommand == all || $subcommand == up ]]; then
  require "$accelerator_type" --accelerator-type JDIFF_TPU_ACCELERATOR_TYPE "e.g. v4-32"
  case $accelerator_type in  # the versions Cloud TPU's docs name for JAX, as a hint
    v2-*|v3-*|v4-*) hint=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) hint=v2-alpha-tpuv5-lite ;;
    v5p-*) hint=v2-alpha-tpuv5 ;;
    v6e-*) hint=v2-alpha-tpuv6e ;;
    *) hint="" ;;
  esac
  require "$runtime_version" --runtime-version JDIFF_TPU_RUNTIME_VERSION \
    "${hint:+for $accelerator_type use $hint}"
fi

repo=$(cd "$(dirname "$0")/.." && pwd -P)
if [[ $subcommand == all || $subcommand == train ]]; then
  require "$config" --config JDIFF_TPU_CONFIG "e.g. configs/cifar10_ddpm.py"
  require "$bucket" --bucket JDIFF_TPU_BUCKET "e.g. gs://my-bucket/jdiff"
  # The workers run the copied repo, so the config must be a file inside it: accept a path
  # from here or from the repo root and turn it into one relative to the repo root.
  if [ -f "$config" ]; then
    config_abs="$(cd "$(dirname "$config")" && pwd -P)/$(basename "$config")"
  elif [ -f "$repo/$config" ]; then
    config_abs="$(cd "$(dirname "$repo/$config")" && pwd -P)/$(basename "$config")"
  else
    die "--config=$config: no such file"
  fi
  [[ $config_abs == "$repo"/* ]] || die "--config=$config: must be a file inside $repo (it is copied to the workers)"
  config=${config_abs#"$repo"/}
  bucket=${bucket%/}
  [[ $bucket == gs://* ]] || bucket="gs://$bucket"
  run_name=${run_name:-$(basename "$config" .py)}
  workdir="$bucket/$run_name"
fi
[[ $log_worker =~ ^[0-9]+$ ]] || die "--log-worker=$log_worker: must be a worker index (0, 1, ...)"
cd "$repo"
# macOS tar would otherwise add ._* resource-fork files to the tarball.
export COPYFILE_DISABLE=1

# ---------------------------------------------------------------------------------------------
# Running commands. With --dry-run, print them instead.
run() {
  if [ "$dry_run" = 1 ]; then quote_words "$@"; echo; else "$@"; fi
}
note() {  # dry-run only: a comment line telling when the next command would run
  if [ "$dry_run" = 1 ]; then echo "# $*"; fi
}
say() { if [ "$dry_run" = 0 ]; then echo ">> $*" >&2; fi; }

where=(--zone="$zone" --project="$project")
tpu_ssh() {  # tpu_ssh WORKERS REMOTE_COMMAND
  run gcloud compute tpus tpu-vm ssh "$name" --worker="$1" "${where[@]}" --command="$2"
}
# How to come back to this slice, for the messages below.
again="bash launch/tpu_pod.sh SUBCOMMAND $(quote_words --project="$project" --zone="$zone" --name="$name")"

# Ctrl-C: say what is left running, since the slice bills and training runs on without us.
phase=""
on_interrupt() {
  trap - INT
  echo >&2
  case $phase in
    create) echo "interrupted while creating $name: it may still come up and bill; check with" \
                 "'${again/SUBCOMMAND/status}', remove with '${again/SUBCOMMAND/delete}'" >&2 ;;
    install) echo "interrupted while copying/installing on $name (remote steps may still be" \
                  "running); the slice is up and bills: rerun 'up', or '${again/SUBCOMMAND/delete}'" >&2 ;;
    train) echo "interrupted while starting training: some workers may have started; see" \
                "'${again/SUBCOMMAND/status}', end them with '${again/SUBCOMMAND/stop}'" >&2 ;;
    logs|wait) echo "stopped following; training goes on on $name. Follow again:" \
                    "'${again/SUBCOMMAND/logs}', end it: '${again/SUBCOMMAND/stop}'," \
                    "remove the slice: '${again/SUBCOMMAND/delete}'" >&2
               if [ "$delete_after" = 1 ]; then echo "--delete-after: NOT deleted" >&2; fi ;;
    stop) echo "interrupted while stopping: SIGTERM may have reached some workers; see" \
               "'${again/SUBCOMMAND/status}'" >&2 ;;
    delete) echo "interrupted: the deletion of $name may go on without us; see" \
                 "'${again/SUBCOMMAND/status}'" >&2 ;;
    *) echo "interrupted" >&2 ;;
  esac
  exit 130
}
trap on_interrupt INT

# ---------------------------------------------------------------------------------------------
# Remote side. Every worker keeps: ~/jdiff (the code), ~/jdiff-venv, and in ~/jdiff-logs the
# training logs, train.pid (the process group of the run) and train.exit (its exit status).
# Each remote command is one line, so --dry-run prints one line per command.
# shellcheck disable=SC2016  # $HOME is the worker's, expanded there
L='$HOME/jdiff-logs'
running="{ [ -f $L/train.pid ] && kill -0 \"\$(cat $L/train.pid)\" 2>/dev/null; }"

install_cmd() {
  local steps=(
    "set -e"
    "if $running; then echo \"\$(hostname): training is running; stop it first\" >&2; exit 1; fi"
    "rm -rf \$HOME/jdiff && mkdir -p \$HOME/jdiff && tar -xzf \$HOME/jdiff-code.tgz -C \$HOME/jdiff"
    # jdiff needs Python >= 3.11 and the TPU images ship Ubuntu 22.04's 3.10: uv fetches one.
    "if [ ! -x \$HOME/jdiff-venv/bin/python ]; then python3 -m pip install -q --user -U uv && \$HOME/.local/bin/uv venv -q --seed --python $(q "$python_version") \$HOME/jdiff-venv; fi"
    "\$HOME/jdiff-venv/bin/pip install -q -U pip"
    "\$HOME/jdiff-venv/bin/pip install -q -e \$HOME/jdiff 'jax[tpu]'"
    "echo \"\$(hostname): installed jdiff, jax \$(\$HOME/jdiff-venv/bin/python -c 'import jax; print(jax.__version__)')\""
  )
  local IFS=';'
  echo "${steps[*]}"
}

train_cmd() {
  local stamp py inner steps
  stamp=$(date -u +%Y%m%d-%H%M%S)
  py="\$HOME/jdiff-venv/bin/python $(quote_words -m jdiff.main --config="$config" \
      --workdir="$workdir" --mode=train --config.distributed=True \
      ${overrides[@]+"${overrides[@]}"})"
  # The wrapper records its pid (= the process group, thanks to setsid) for stop/logs, and
  # python's exit status. `trap : TERM` keeps the wrapper alive on stop's SIGTERM to the group
  # so it can still write the status; python gets its default SIGTERM handling back at exec.
  inner="trap : TERM; echo \$\$ > $L/train.pid; cd \$HOME/jdiff; $py; echo \$? > $L/train.exit"
  steps=(
    "set -e"
    "if $running; then echo \"\$(hostname): training already running (pid \$(cat $L/train.pid)); stop it first\" >&2; exit 1; fi"
    "mkdir -p $L && rm -f $L/train.pid $L/train.exit"
    "ln -sfn train-$stamp.log $L/latest.log"
    # setsid: detached from the ssh connection's terminal, so closing the connection does not
    # hang it up, and stop can signal the whole process group. nohup: the same, for shells that send SIGHUP anyway.
    "{ setsid nohup bash -c $(q "$inner") > $L/train-$stamp.log 2>&1 < /dev/null & }"
    "for i in \$(seq 50); do [ -s $L/train.pid ] && break; sleep 0.1; done"
    "echo \"\$(hostname): started (pid \$(cat $L/train.pid)), log ~/jdiff-logs/train-$stamp.log\""
  )
  local IFS=';'
  echo "${steps[*]}"
}

# Follows the latest log until its run ends (tail --pid), then exits with the run's status.
logs_cmd() {
  local steps=(
    "[ -f $L/train.pid ] || { echo \"\$(hostname): no training started here\" >&2; exit 1; }"
    "tail -n 200 -F --pid=\"\$(cat $L/train.pid)\" $L/latest.log"
    "s=\$(cat $L/train.exit 2>/dev/null || echo unknown)"
    "echo \"\$(hostname): training ended, exit status \$s\""
    "[ \"\$s\" = 0 ]"
  )
  local IFS=';'
  echo "${steps[*]}"
}

# Waits until the run has ended here (used before --delete-after deletes the slice).
wait_cmd() {
  local steps=(
    "while $running; do sleep 10; done"
    "echo \"\$(hostname): training ended, exit status \$(cat $L/train.exit 2>/dev/null || echo unknown)\""
  )
  local IFS=';'
  echo "${steps[*]}"
}

status_cmd() {
  local steps=(
    "if $running; then echo \"\$(hostname): training (pid \$(cat $L/train.pid)), log \$(readlink $L/latest.log)\""
    "elif [ -f $L/train.exit ]; then echo \"\$(hostname): training ended, exit status \$(cat $L/train.exit)\""
    "elif [ -f $L/train.pid ]; then echo \"\$(hostname): training ended without a status (killed?)\""
    "else echo \"\$(hostname): no training started\"; fi"
  )
  local IFS=';'
  echo "${steps[*]}"
}

# SIGTERM to the run's process group: jdiff saves a checkpoint and exits 0. Waits up to 5 min.
stop_cmd() {
  local steps=(
    "if ! $running; then echo \"\$(hostname): not training\"; exit 0; fi"
    "p=\$(cat $L/train.pid)"
    "kill -TERM -- -\$p"
    "echo \"\$(hostname): sent SIGTERM, waiting for the checkpoint\""
    "for i in \$(seq 300); do kill -0 \$p 2>/dev/null || break; sleep 1; done"
    "if kill -0 \$p 2>/dev/null; then echo \"\$(hostname): still running after 5 min; to force: kill -KILL -- -\$p\" >&2; exit 1; fi"
    "echo \"\$(hostname): stopped, exit status \$(cat $L/train.exit 2>/dev/null || echo unknown)\""
  )
  local IFS=';'
  echo "${steps[*]}"
}

# ---------------------------------------------------------------------------------------------
# Subcommands.
do_up() {
  say "TPU VM $name ($accelerator_type, $zone, $project)"
  local state=""
  note "reuse the TPU VM if this finds it READY; otherwise:"
  if [ "$dry_run" = 0 ]; then
    state=$(gcloud compute tpus tpu-vm describe "$name" "${where[@]}" \
              --format='value(state,acceleratorType)' 2>/dev/null || true)
  else
    run gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state,acceleratorType)'
  fi
  if [ -z "$state" ]; then
    local create=(gcloud compute tpus tpu-vm create "$name" "${where[@]}"
                  --accelerator-type="$accelerator_type" --version="$runtime_version")
    if [ "$spot" = 1 ]; then create+=(--spot); fi
    phase="create"
    run "${create[@]}"
  else
    read -r st acc <<<"$state"
    [ "$st" = READY ] || die "TPU VM $name exists but is $st; wait for READY, or delete it" \
                             "('${again/SUBCOMMAND/delete}') and run 'up' again"
    [ "$acc" = "$accelerator_type" ] || die "TPU VM $name exists as $acc, not" \
                                            "$accelerator_type; pick another --name or delete it"
    say "reusing TPU VM $name (READY, $acc)"
  fi

  phase=install
  # The code as in this working tree: tracked and untracked-but-not-ignored files.
  local tarball
  if [ "$dry_run" = 0 ]; then
    if [ -n "$(git ls-files --deleted)" ]; then
      die "files tracked by git are missing from the working tree ($(git ls-files --deleted |
           head -n 3 | tr '\n' ' ')): restore them or git rm them"
    fi
    tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/jdiff-launch.XXXXXX")
    trap 'rm -rf "$tmp_dir"' EXIT
    tarball="$tmp_dir/jdiff-code.tgz"
    git ls-files -z --cached --others --exclude-standard | tar -czf "$tarball" --null -T -
  else
    tarball="${TMPDIR:-/tmp}/jdiff-launch.XXXXXX/jdiff-code.tgz"
    echo "git ls-files -z --cached --others --exclude-standard | tar -czf $(q "$tarball") --null -T -"
  fi
  say "copying the code to every worker"
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:jdiff-code.tgz" --worker=all "${where[@]}"
  say "installing on every worker (a few minutes)"
  tpu_ssh all "$(install_cmd)"
}

do_train() {
  phase=train
  say "starting training on every worker: $config -> $workdir"
  tpu_ssh all "$(train_cmd)"
}

do_logs() {
  phase=logs
  say "following worker $log_worker's log (Ctrl-C stops following, not training)"
  local status=0
  tpu_ssh "$log_worker" "$(logs_cmd)" || status=$?
  if [ "$delete_after" = 1 ]; then
    phase="wait"
    say "waiting for every worker to finish before deleting $name"
    # Deleting needs proof that all workers are done: if this ssh fails, keep the slice.
    if ! tpu_ssh all "$(wait_cmd)"; then
      echo "could not confirm that training ended on every worker; $name NOT deleted:" \
           "'${again/SUBCOMMAND/delete}' when done" >&2
      exit 1
    fi
    phase=delete
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
  return "$status"
}

case $subcommand in
  up) do_up ;;
  train) do_train ;;
  logs) do_logs ;;
  all) do_up; do_train; do_logs ;;
  status)
    run gcloud compute tpus tpu-vm describe "$name" "${where[@]}" \
        --format='value(state,acceleratorType,runtimeVersion)'
    tpu_ssh all "$(status_cmd)" ;;
  stop) phase=stop; tpu_ssh all "$(stop_cmd)" ;;
  delete) phase=delete; run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" ;;
esac
