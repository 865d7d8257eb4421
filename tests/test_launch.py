"""launch/tpu_pod.sh and launch/slurm.sh, without a cloud or a cluster.

The scripts run with --dry-run (fake gcloud/sbatch on PATH fail the test if called); the
printed commands are split back into argv lists and checked. The remote commands the TPU
launcher sends over ssh, and the sbatch script the SLURM launcher writes, are then run here
with a fake python (and a fake srun/scontrol), to check the argv and JDIFF_* variables that
jdiff.main would get, and the start/stop/logs bookkeeping.
"""

import os
import shlex
import shutil
import signal
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, "launch", "tpu_pod.sh")
SLURM = os.path.join(REPO, "launch", "slurm.sh")

TPU_FLAGS = dict(project="my-proj", zone="us-central2-b", name="jdiff-v4",
                 accelerator_type="v4-32", runtime_version="tpu-ubuntu2204-base",
                 bucket="gs://my-bucket/runs", config="configs/cifar10_ddpm.py")
TPU_ENV = {f"JDIFF_TPU_{k.upper()}": v for k, v in TPU_FLAGS.items()}
TRICKY = ["--config.model.ch_mult=(1,2,2)", "--config.data.path=/a b/it's.npz"]


def _flags(values):
  return [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]


@pytest.fixture
def fake_bin(tmp_path):
  """A PATH directory whose gcloud/sbatch/srun/scontrol record that they were called."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "sbatch", "srun", "scontrol", "scancel"):
    path = bin_dir / tool
    path.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {tmp_path}/called\nexit 1\n")
    path.chmod(0o755)
  yield bin_dir
  assert not (tmp_path / "called").exists(), (tmp_path / "called").read_text()


def run(script, args, fake_bin, env=None, check=True):
  full_env = {k: v for k, v in os.environ.items()
              if not k.startswith(("JDIFF_TPU_", "JDIFF_SLURM_"))}
  full_env["PATH"] = f"{fake_bin}{os.pathsep}{full_env['PATH']}"
  full_env.update(env or {})
  result = subprocess.run(["bash", script] + list(args), capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def commands(stdout):
  """The printed commands, each split back into its argv; comment lines dropped."""
  return [shlex.split(line) for line in stdout.splitlines()
          if line.strip() and not line.startswith("#")]


def gcloud(cmds, verb):
  return [c for c in cmds if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and c[4] == verb]


def remote(cmd):
  [arg] = [a for a in cmd if a.startswith("--command=")]
  return arg[len("--command="):]


# ----------------------------------------------------------------------------------- tpu_pod.sh

def _check_tpu_all(cmds, zone="us-central2-b", project="my-proj"):
  where = [f"--zone={zone}", f"--project={project}"]
  [describe] = gcloud(cmds, "describe")
  assert describe[5:8] == ["jdiff-v4"] + where
  [create] = gcloud(cmds, "create")
  assert create[5:] == ["jdiff-v4"] + where + ["--accelerator-type=v4-32",
                                               "--version=tpu-ubuntu2204-base"]
  [scp] = gcloud(cmds, "scp")
  assert scp[6:] == ["jdiff-v4:jdiff-code.tgz", "--worker=all"] + where
  assert scp[5].endswith("jdiff-code.tgz")
  [tar] = [c for c in cmds if c[0] == "git"]
  assert tar[:2] == ["git", "ls-files"] and "tar" in tar and scp[5] in tar
  install, train, logs = gcloud(cmds, "ssh")
  for ssh in (install, train, logs):
    assert ssh[5:7] == ["jdiff-v4", "--worker=0" if ssh is logs else "--worker=all"]
    assert ssh[7:9] == where
  assert "pip install -q -e $HOME/jdiff 'jax[tpu]'" in remote(install)
  assert "tail" in remote(logs)
  return remote(train)


def _python_argv(train_command):
  """The argv of jdiff.main inside the train command's `bash -c '...'` wrapper."""
  words = shlex.split(train_command)
  inner = words[words.index("-c") + 1]
  [py] = [part for part in inner.split("; ") if "jdiff.main" in part]
  return shlex.split(py)[1:]


EXPECTED_ARGV = ["-m", "jdiff.main", "--config=configs/cifar10_ddpm.py",
                 "--workdir=gs://my-bucket/runs/cifar10_ddpm", "--mode=train",
                 "--config.distributed=True", "--config.training.batch_size=512"] + TRICKY


def test_tpu_dry_run_from_flags(fake_bin):
  result = run(TPU, _flags(TPU_FLAGS) + ["--dry-run", "--config.training.batch_size=512",
                                         "--"] + TRICKY, fake_bin)
  cmds = commands(result.stdout)
  train = _check_tpu_all(cmds)
  assert _python_argv(train) == EXPECTED_ARGV
  assert not gcloud(cmds, "delete")


def test_tpu_dry_run_from_environment(fake_bin):
  env = dict(TPU_ENV, JDIFF_TPU_ZONE="europe-west4-a")
  result = run(TPU, ["all", "--dry-run", "--config.training.batch_size=512", "--"] + TRICKY,
               fake_bin, env=env)
  train = _check_tpu_all(commands(result.stdout), zone="europe-west4-a")
  assert _python_argv(train) == EXPECTED_ARGV
  # A flag wins over its variable.
  result = run(TPU, ["--dry-run", "--zone=us-east5-a", "--run-name=exp/1"], fake_bin, env=env)
  train = _check_tpu_all(commands(result.stdout), zone="us-east5-a")
  assert "--workdir=gs://my-bucket/runs/exp/1" in _python_argv(train)


def _assert_missing_value_is_one_line(script, flags, prefix, field, fake_bin):
  values = {k: v for k, v in flags.items() if k != field}
  result = run(script, _flags(values) + ["--dry-run"], fake_bin, check=False)
  flag, var = f"--{field.replace('_', '-')}", f"{prefix}{field.upper()}"
  assert result.returncode != 0 and result.stdout == ""
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and flag in lines[0] and var in lines[0], result.stderr


@pytest.mark.parametrize("field", sorted(TPU_FLAGS))
def test_tpu_missing_value_names_flag_and_variable(fake_bin, field):
  _assert_missing_value_is_one_line(TPU, TPU_FLAGS, "JDIFF_TPU_", field, fake_bin)


def test_tpu_subcommands(fake_bin):
  where = ["--zone=us-central2-b", "--project=my-proj"]
  base = _flags(TPU_FLAGS) + ["--dry-run"]
  cmds = commands(run(TPU, ["up", "--spot"] + base, fake_bin).stdout)
  assert gcloud(cmds, "create")[0][-1] == "--spot" and len(gcloud(cmds, "ssh")) == 1

  [ssh] = commands(run(TPU, ["train"] + base, fake_bin).stdout)
  assert ssh[5] == "jdiff-v4" and "--worker=all" in ssh and "setsid nohup" in remote(ssh)

  [stop] = commands(run(TPU, ["stop"] + base, fake_bin).stdout)
  assert gcloud([stop], "ssh") and "--worker=all" in stop and "kill -TERM" in remote(stop)

  cmds = commands(run(TPU, ["status"] + base, fake_bin).stdout)
  assert gcloud(cmds, "describe") and "--worker=all" in gcloud(cmds, "ssh")[0]

  [delete] = commands(run(TPU, ["delete"] + base, fake_bin).stdout)
  assert delete == "gcloud compute tpus tpu-vm delete jdiff-v4".split() + where

  # --delete-after: wait for every worker, then delete without a prompt.
  cmds = commands(run(TPU, base + ["--delete-after", "--log-worker=2"], fake_bin).stdout)
  logs, wait = gcloud(cmds, "ssh")[-2:]
  assert "--worker=2" in logs and "--worker=all" in wait
  assert cmds[-1] == "gcloud compute tpus tpu-vm delete jdiff-v4".split() + where + ["--quiet"]

  # Only what a subcommand uses is required: stop needs no accelerator, bucket or config.
  run(TPU, ["stop", "--dry-run", "--project=p", "--zone=z", "--name=n"], fake_bin)
  missing = run(TPU, ["up", "--dry-run", "--project=p", "--zone=z", "--name=n",
                      "--accelerator-type=v5p-32"], fake_bin, check=False)
  assert missing.returncode != 0 and "v2-alpha-tpuv5" in missing.stderr

  assert "Usage:" in run(TPU, ["--help"], fake_bin).stdout
  bad = run(TPU, base + ["--bogus"], fake_bin, check=False)
  assert bad.returncode == 2 and "--bogus" in bad.stderr
  bad = run(TPU, _flags(dict(TPU_FLAGS, config="configs/nope.py")) + ["--dry-run"], fake_bin,
            check=False)
  assert bad.returncode == 2 and "configs/nope.py" in bad.stderr


# A worker's python3 whose `pip install --user uv` brings a uv whose `venv` makes a fake venv.
FAKE_SYSTEM_PYTHON = r"""#!/bin/bash
echo "python3 $*" >> "$HOME/calls.log"
mkdir -p "$HOME/.local/bin"
cat > "$HOME/.local/bin/uv" <<'UV'
#!/bin/bash
echo "uv $*" >> "$HOME/calls.log"
venv="${@: -1}"
mkdir -p "$venv/bin"
printf '#!/bin/bash\necho "pip $*" >> "$HOME/calls.log"\n' > "$venv/bin/pip"
printf '#!/bin/bash\necho 0.0-fake\n' > "$venv/bin/python"
chmod +x "$venv/bin/pip" "$venv/bin/python"
UV
chmod +x "$HOME/.local/bin/uv"
"""


def test_tpu_remote_install(fake_bin, tmp_path):
  """Packs the code with the printed tar line and runs the install --command in a fake home."""
  printed = run(TPU, ["up"] + _flags(TPU_FLAGS) + ["--dry-run"], fake_bin).stdout
  cmds = commands(printed)
  [scp] = gcloud(cmds, "scp")
  [tar_line] = [line for line in printed.splitlines() if line.startswith("git ")]
  home = tmp_path / "home"
  home.mkdir()
  tarball = home / "jdiff-code.tgz"
  subprocess.run(["bash", "-c", tar_line.replace(scp[5], str(tarball))], cwd=REPO, check=True)
  worker_bin = tmp_path / "worker_bin"
  worker_bin.mkdir()
  (worker_bin / "python3").write_text(FAKE_SYSTEM_PYTHON)
  (worker_bin / "python3").chmod(0o755)
  env = dict(os.environ, HOME=str(home), PATH=f"{worker_bin}{os.pathsep}{os.environ['PATH']}")
  install = remote(gcloud(cmds, "ssh")[0])

  for attempt in range(2):
    (home / "jdiff").mkdir(exist_ok=True)
    (home / "jdiff" / "stale.py").write_text("")  # left from an older copy: removed
    result = subprocess.run(["bash", "-c", install], capture_output=True, text=True, env=env,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert "installed jdiff, jax 0.0-fake" in result.stdout
    assert (home / "jdiff" / "jdiff" / "main.py").exists()
    assert (home / "jdiff" / "setup.cfg").exists()
    assert not (home / "jdiff" / "stale.py").exists()
    calls = (home / "calls.log").read_text().splitlines()
    uv_calls = ["python3 -m pip install -q --user -U uv",
                f"uv venv -q --seed --python 3.11 {home}/jdiff-venv"]
    if attempt == 0:
      assert calls[:2] == uv_calls
    else:  # the venv is made once; a second install (new code) only runs pip
      assert not set(uv_calls) & set(calls)
    assert calls[-1] == f"pip install -q -e {home}/jdiff jax[tpu]"
    (home / "calls.log").unlink()


FAKE_PYTHON = """#!/bin/bash
printf '%s\\n' "$PWD" "$@" > "$HOME/argv.txt"
echo "step 1"
if [ -n "${FAKE_EXIT:-}" ]; then exit "$FAKE_EXIT"; fi
trap 'echo "saved a checkpoint"; exit 0' TERM
for i in $(seq 100); do sleep 0.1; done
exit 4
"""


@pytest.mark.skipif(not shutil.which("setsid"), reason="needs setsid (util-linux)")
def test_tpu_remote_commands_start_stop_and_follow(fake_bin, tmp_path):
  """Runs the ssh --command strings as a worker's login shell would (bash -c), in a fake home."""
  base = _flags(TPU_FLAGS) + ["--dry-run", "--"] + TRICKY
  remote_cmd = {sub: remote(commands(run(TPU, [sub] + base, fake_bin).stdout)[-1])
                for sub in ("train", "status", "stop", "logs")}
  home = tmp_path / "home"
  (home / "jdiff").mkdir(parents=True)
  (home / "jdiff-venv" / "bin").mkdir(parents=True)
  python = home / "jdiff-venv" / "bin" / "python"
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  pid_file, exit_file = home / "jdiff-logs" / "train.pid", home / "jdiff-logs" / "train.exit"

  def on_worker(sub, **env):
    return subprocess.run(["bash", "-c", remote_cmd[sub]], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, HOME=str(home), **env))

  try:
    started = on_worker("train")
    assert started.returncode == 0 and "started" in started.stdout, started.stderr
    for _ in range(100):
      if (home / "argv.txt").exists():
        break
      time.sleep(0.05)
    argv = (home / "argv.txt").read_text().splitlines()
    assert argv[0] == str(home / "jdiff")
    assert argv[1:] == EXPECTED_ARGV[:6] + TRICKY
    assert "training (pid" in on_worker("status").stdout
    again = on_worker("train")
    assert again.returncode != 0 and "already running" in again.stderr

    stopped = on_worker("stop")
    assert stopped.returncode == 0 and "stopped, exit status 0" in stopped.stdout, stopped
    assert exit_file.read_text().strip() == "0"
    followed = on_worker("logs")
    assert followed.returncode == 0
    assert "step 1" in followed.stdout and "saved a checkpoint" in followed.stdout
    assert "exit status 0" in followed.stdout
    assert "exit status 0" in on_worker("status").stdout

    # A run that fails: logs follows it to the end and exits non-zero with its status.
    assert on_worker("train", FAKE_EXIT="3").returncode == 0
    followed = on_worker("logs")
    assert followed.returncode != 0 and "exit status 3" in followed.stdout
    assert "not training" in on_worker("stop").stdout
  finally:
    if pid_file.exists():  # the process group this test started, if still there
      try:
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)
      except (ProcessLookupError, ValueError):
        pass


# ------------------------------------------------------------------------------------- slurm.sh

SLURM_FLAGS = dict(nodes="2", gpus_per_node="8", partition="gpu-long", time="24:00:00",
                   config="configs/cifar10_ddpm.py", workdir="/shared/runs/x")


def _sbatch_script(stdout):
  """(mkdir argv, script text, sbatch argv) from slurm.sh --dry-run's output."""
  lines = stdout.splitlines()
  start, end = lines.index(next(l for l in lines if l.startswith("cat > "))), \
      lines.index("JDIFF_SBATCH_EOF")
  path = shlex.split(lines[start])[2]
  assert lines[start].endswith("<<'JDIFF_SBATCH_EOF'")
  return shlex.split(lines[0]), "\n".join(lines[start + 1:end]) + "\n", \
      shlex.split(lines[end + 1]), path


def _check_slurm(stdout, partition="gpu-long", log_dir="/shared/runs/x/slurm"):
  mkdir, script, sbatch, path = _sbatch_script(stdout)
  assert mkdir == ["mkdir", "-p", log_dir]
  assert sbatch == ["sbatch", "--parsable", path] and path.startswith(log_dir + "/")
  sbatch_lines = [l for l in script.splitlines() if l.startswith("#SBATCH")]
  for expected in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8",
                   f"--partition={partition}", "--time=24:00:00",
                   f"--output={log_dir}/%x-%j.out", "--job-name=jdiff-cifar10_ddpm"):
    assert f"#SBATCH {expected}" in sbatch_lines, (expected, script)
  assert "scontrol show hostnames \"$SLURM_JOB_NODELIST\"" in script
  assert "export JDIFF_NUM_PROCESSES=\"$SLURM_NNODES\"" in script
  assert "JDIFF_COORDINATOR_ADDRESS=" in script
  [srun] = [l for l in script.splitlines() if l.startswith("srun ")]
  assert "--ntasks-per-node=1" in srun
  assert "'export JDIFF_PROCESS_ID=$SLURM_PROCID; exec " in script
  assert "--config.distributed=True" in script
  return script


def test_slurm_dry_run_flags_and_environment(fake_bin):
  result = run(SLURM, _flags(SLURM_FLAGS) + ["--dry-run", "--config.training.batch_size=256"],
               fake_bin)
  script = _check_slurm(result.stdout)
  assert "--config.training.batch_size=256" in script

  env = {f"JDIFF_SLURM_{k.upper()}": v for k, v in SLURM_FLAGS.items()}
  result = run(SLURM, ["--dry-run", "--partition=other", "--log-dir=/logs",
                       "--sbatch-option=--qos=high"], fake_bin, env=env)
  script = _check_slurm(result.stdout, partition="other", log_dir="/logs")
  assert "#SBATCH --qos=high" in script


@pytest.mark.parametrize("field", ["nodes", "gpus_per_node", "config", "workdir"])
def test_slurm_missing_value_names_flag_and_variable(fake_bin, field):
  _assert_missing_value_is_one_line(SLURM, SLURM_FLAGS, "JDIFF_SLURM_", field, fake_bin)
  bad = run(SLURM, _flags(dict(SLURM_FLAGS, nodes="0")) + ["--dry-run"], fake_bin, check=False)
  assert bad.returncode == 2 and "--nodes=0" in bad.stderr


FAKE_SRUN = """#!/bin/bash
# One task per node, in turn, each with its own SLURM_PROCID.
while [[ $1 == -* ]]; do shift; done
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_PROCID=$i "$@" || exit; done
"""
FAKE_SCONTROL = """#!/bin/bash
[ "$1 $2 $3" = "show hostnames node-[07-08]" ] && printf 'node-07\\nnode-08\\n'
"""
FAKE_GPU_PYTHON = """#!/bin/bash
{ echo "$JDIFF_COORDINATOR_ADDRESS $JDIFF_NUM_PROCESSES $JDIFF_PROCESS_ID $PWD"
  printf '%s\\n' "$@"; } > "$FAKE_OUT/process-$JDIFF_PROCESS_ID.txt"
"""


def test_slurm_script_starts_one_process_per_node(fake_bin, tmp_path):
  python = tmp_path / "python"
  python.write_text(FAKE_GPU_PYTHON)
  python.chmod(0o755)
  result = run(SLURM, _flags(SLURM_FLAGS) + ["--dry-run", f"--python={python}", "--"] + TRICKY,
               fake_bin)
  _, script, _, _ = _sbatch_script(result.stdout)
  script_file = tmp_path / "job.sbatch"
  script_file.write_text(script)
  assert subprocess.run(["bash", "-n", str(script_file)]).returncode == 0

  cluster_bin = tmp_path / "cluster_bin"
  cluster_bin.mkdir()
  for tool, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
    (cluster_bin / tool).write_text(text)
    (cluster_bin / tool).chmod(0o755)
  env = dict(os.environ, PATH=f"{cluster_bin}{os.pathsep}{os.environ['PATH']}",
             SLURM_JOB_NODELIST="node-[07-08]", SLURM_NNODES="2", SLURM_JOB_ID="123456",
             FAKE_OUT=str(tmp_path))
  job = subprocess.run(["bash", str(script_file)], capture_output=True, text=True, env=env,
                       timeout=30)
  assert job.returncode == 0, job.stderr
  assert "coordinator node-07:23456" in job.stdout
  for process_id in (0, 1):
    header, *argv = (tmp_path / f"process-{process_id}.txt").read_text().splitlines()
    assert header == f"node-07:23456 2 {process_id} {REPO}"
    assert argv == ["-m", "jdiff.main", "--config=configs/cifar10_ddpm.py",
                    "--workdir=/shared/runs/x", "--mode=train", "--config.distributed=True"] + TRICKY

  result = run(SLURM, _flags(SLURM_FLAGS) + ["--dry-run", "--port=8476"], fake_bin)
  assert 'JDIFF_COORDINATOR_ADDRESS="${hosts[0]}:8476"' in _sbatch_script(result.stdout)[1]


def test_slurm_submits_the_written_script(tmp_path):
  """Without --dry-run: the script lands in the log dir and sbatch gets it."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch_args\necho "777;c"\n')
  (bin_dir / "sbatch").chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  workdir = tmp_path / "run"
  result = subprocess.run(["bash", SLURM, "--nodes=2", "--gpus-per-node=4",
                           "--config=configs/cifar10_ddpm.py", f"--workdir={workdir}"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=30)
  assert result.returncode == 0, result.stderr
  [script] = (workdir / "slurm").glob("jdiff-cifar10_ddpm-*.sbatch")
  assert (tmp_path / "sbatch_args").read_text().split() == ["--parsable", str(script)]
  assert "#SBATCH --gpus-per-node=4" in script.read_text()
  assert "submitted job 777" in result.stdout
  assert f"{workdir}/slurm/jdiff-cifar10_ddpm-777.out" in result.stdout


# ----------------------------------------------------------------------------------------- both

@pytest.mark.parametrize("script", [TPU, SLURM])
def test_bash_syntax(script):
  result = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed")
def test_shellcheck(fake_bin, tmp_path):
  result = run(SLURM, _flags(SLURM_FLAGS) + ["--dry-run"], fake_bin)
  generated = tmp_path / "job.sbatch"
  generated.write_text(_sbatch_script(result.stdout)[1])
  # -x follows `source launch/common.sh` (its path is relative to the repository).
  result = subprocess.run(["shellcheck", "-x", TPU, SLURM, str(generated)], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.dirname(TPU)))
  assert result.returncode == 0, result.stdout + result.stderr
