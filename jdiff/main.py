"""jdiff command line.

  python -m jdiff.main --config=configs/quickstart.py --workdir=workdirs/quickstart --mode=train
  python -m jdiff.main --config=configs/quickstart.py --workdir=workdirs/quickstart --mode=sample
  python -m jdiff.main --config=configs/quickstart.py --workdir=workdirs/quickstart --mode=evaluate
  python -m jdiff.main --config=configs/cifar10_ddpm.py --workdir=stats --mode=reference_stats
  python -m jdiff.main --config=configs/cifar10_ddpm.py --mode=summary
  python -m jdiff.main --config=configs/quickstart.py --workdir=/tmp/bench --mode=bench

Any config value can be overridden: --config.training.batch_size=64.
"""

import json
import re
import signal
import sys

from jdiff import console

console.quiet_startup()  # before TensorFlow or jax load

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags

from jdiff import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from jdiff import errors  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs, samples and bench.json.")
_MODE = flags.DEFINE_enum("mode", "train", config_lib.MODES, "What to do.")
_FROM_SCRATCH = flags.DEFINE_bool(
    "from_scratch", False, "--mode=train: move the workdir's existing checkpoints aside (to "
    "checkpoints.replaced-<time>/) and start at step 0. Without it, a train run resumes them, "
    "or refuses when they hold another model or none restores.")
flags.mark_flags_as_required(["config"])


def _fail(message: str, code: int):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _config_overrides(argv):
  """[(field, value)] of the --config.<field>=<value> (or --config.<field> <value>) arguments."""
  overrides = []
  for i, arg in enumerate(argv):
    if arg.startswith("--config."):
      field, equals, value = arg[len("--config."):].partition("=")
      if not equals:
        value = argv[i + 1] if i + 1 < len(argv) else ""
      overrides.append((field, value))
  return overrides


def _refuse_repeated_overrides(argv) -> None:
  """ml_collections appends a repeated tuple override ((1,2) then 1,2 trains (1,2,1,2))."""
  seen = {}
  for field, value in _config_overrides(argv):
    if field in seen:
      raise errors.ConfigError(f"--config.{field} is given twice ({seen[field]!r} and {value!r}): "
                               "give each field once")
    seen[field] = value


def _flag_error_line(error: BaseException, argv) -> str:
  """One line for a failure while parsing --config and its overrides (ml_collections raises
  tracebacks inside messages, and AttributeErrors for unknown fields)."""
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  root = chain[-1]
  config_file = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")), "?")
  suggestion = next((str(e) for e in chain if "Did you mean" in str(e)), None)
  if isinstance(root, KeyError) and suggestion is not None:
    name = str(root.args[0]).strip("'")
    hint = re.search(r'Did you mean "([^"]+)"', suggestion.replace("\\", ""))
    hint = f' (did you mean "{hint.group(1)}"?)' if hint else ""
    field = next((f for f, _ in _config_overrides(argv) if f.split(".")[-1] == name), None)
    where = f"--config.{field}" if field else f"config field {name!r}"
    return f"{where}: no such field in {config_file}{hint}"
  if isinstance(root, SyntaxError):
    return f"--config={config_file}: SyntaxError: {root.msg} (line {root.lineno})"
  if isinstance(root, OSError) and "Failed loading config file" in str(root):
    reason = [line.strip() for line in str(root).splitlines() if line.strip()][-1]
    return f"--config={config_file}: cannot load it ({reason})"
  first = str(chain[0]).strip().splitlines()[0] if str(chain[0]).strip() else ""
  if "Error whilst parsing config file" in str(chain[0]):
    return f"--config={config_file}: get_config() raised {type(root).__name__}: {root}"
  if isinstance(chain[0], flags.Error) and first:
    return first
  return f"{type(root).__name__}: {str(root).strip().splitlines()[0] if str(root).strip() else ''}"


def parse_flags(argv):
  """absl's flag parsing, with every bad --config (file or override) as one line, exit 2."""
  try:
    _refuse_repeated_overrides(argv[1:])
    return flags.FLAGS(argv)
  except errors.ConfigError as e:
    _fail(str(e), 2)
  except Exception as e:  # pylint: disable=broad-except  (a config file can raise anything)
    _fail(_flag_error_line(e, argv[1:]), 2)


def _run(config, mode: str, workdir: str) -> int:
  """Runs the mode; returns the exit code (errors propagate as errors.JdiffError)."""
  # Imported after validation, so a bad flag fails before anything heavy loads.
  from jdiff import compute  # pylint: disable=g-import-not-at-top
  from jdiff import parallel  # pylint: disable=g-import-not-at-top
  # The host settings and jax.distributed both precede jax's backend (compute.start).
  compute.start(config, lambda: parallel.maybe_initialize_distributed(config.distributed))

  if mode == "train":
    if config.model.kind == "sngan":
      from jdiff.drivers import gan_train as trainer  # pylint: disable=g-import-not-at-top
    else:
      from jdiff.drivers import train as trainer  # pylint: disable=g-import-not-at-top
    result = trainer.train(config, workdir, from_scratch=_FROM_SCRATCH.value)
    what = "SNGAN" if config.model.kind == "sngan" else "model"
    if result.interrupted_by:
      print(f"stopped by {result.interrupted_by} at step {result.step} of "
            f"{config.training.num_steps}; checkpoint saved in {workdir}/checkpoints. Run the same "
            f"command to resume (exit code {result.exit_code})")
    else:
      print(f"{what} at step {result.step}; checkpoints in {workdir}/checkpoints")
    return result.exit_code
  if mode == "sample":
    from jdiff.drivers import sample  # pylint: disable=g-import-not-at-top
    grid, step = sample.sample_with_step(config, workdir)
    print(f"samples of checkpoint step {step}: {workdir}/samples/samples.npz\ngrid: {grid}")
  elif mode == "evaluate":
    from jdiff.drivers import evaluate  # pylint: disable=g-import-not-at-top
    results = evaluate.evaluate(config, workdir)
    print(json.dumps({key: value for key, value in results.items() if key != "sampling"}, indent=2))
  elif mode == "reference_stats":
    from jdiff.drivers import evaluate  # pylint: disable=g-import-not-at-top
    path = evaluate.reference_statistics(config, workdir)
    print(f"reference statistics: {path}\nuse them with --config.evaluation.reference_stats={path}")
  elif mode == "summary":
    _summary(config)
  elif mode == "bench":
    from jdiff.tools import bench  # pylint: disable=g-import-not-at-top
    bench.run(config, workdir)
  return 0


def _summary(config) -> None:
  """clu's table of every parameter array, then the total (and Table 4.3's presets)."""
  import jax  # pylint: disable=g-import-not-at-top
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  from jdiff import builders  # pylint: disable=g-import-not-at-top
  from jdiff.models import presets  # pylint: disable=g-import-not-at-top
  params = jax.eval_shape(lambda: builders.init_params(builders.build_model(config), config,
                                                       jax.random.key(0)))
  print(parameter_overview.get_parameter_overview(params, include_stats=False))
  if config.model.preset:
    print("Table 4.3 presets (parameters here | paper, M):")
    for name, count in builders.preset_parameter_counts(config).items():
      print(f"  {name:<12}  {count:>12,}  |  {presets.PAPER_PARAMETERS_M[name]:.2f}")
  print(f"parameters: {parameter_overview.count_parameters(params)}")


# What a stopped run that does not train kept (training says so itself, after saving).
_KEPT_WHEN_STOPPED = {
    "sample": "nothing written; the previous samples are as they were",
    "evaluate": "finished sample batches are kept; run the same command to continue from them",
    "reference_stats": "nothing written; the previous statistics are as they were",
    "bench": "nothing written",
    "summary": "nothing written",
}


def main(argv):
  if len(argv) > 1:
    extra = argv[1]
    hint = f" (did you mean --{extra}?)" if extra.startswith("config.") else ""
    _fail(f"unexpected argument {extra!r}: every option is a flag that starts with --{hint}", 2)
  try:
    config = _CONFIG.value
    "seed" in config  # pylint: disable=pointless-statement  (a missing file surfaces at first use)
  except Exception as e:  # pylint: disable=broad-except
    _fail(_flag_error_line(e, sys.argv[1:]), 2)
  mode, workdir = _MODE.value, _WORKDIR.value
  console.quiet_absl_handler()
  try:
    config_lib.validate(config_lib.split_comma_lists(config))
    if mode != "summary" and not workdir:
      raise errors.ConfigError(f"--workdir is required for --mode={mode}")
    if mode in ("sample", "evaluate") and config.model.kind == "sngan":
      raise errors.ConfigError(
          f"--mode={mode} runs a diffusion model; an SNGAN (config.model.kind='sngan') serves as "
          "config.surrogate of one")
    if _FROM_SCRATCH.value and mode != "train":
      raise errors.ConfigError(f"--from_scratch is for --mode=train, not --mode={mode}")
    if workdir:
      from jdiff import files  # pylint: disable=g-import-not-at-top
      files.check_workdir(workdir)
    if mode != "train":  # training saves a checkpoint on a signal itself (checkpoint.Interruption)
      signal.signal(signal.SIGTERM, errors.request_stop)
      signal.signal(signal.SIGINT, errors.request_stop)
    code = _run(config, mode, workdir)
  except errors.JdiffError as e:
    if isinstance(e, errors.NonFiniteLossError):
      logging.error("%s", e)
    _fail(str(e), e.exit_code)
  except (KeyboardInterrupt, errors.StopRequested) as e:
    name = errors.signal_name(e)
    if mode == "train":
      _fail("interrupted twice: stopped without saving; the last checkpoint in the workdir is "
            "intact", errors.EXIT_INTERRUPTED[name])
    _fail(f"stopped by {name}: {_KEPT_WHEN_STOPPED.get(mode, 'nothing written')}",
          errors.EXIT_INTERRUPTED[name])
  except OSError as e:
    from jdiff import files  # pylint: disable=g-import-not-at-top
    if e.errno not in files.WRITE_ERRNOS:
      raise
    _fail(str(files.write_error(e.filename or workdir, e, "use")), 1)
  except Exception as e:  # pylint: disable=broad-except  (XLA raises its own runtime errors)
    if not errors.is_out_of_memory(e):
      raise
    _fail(str(errors.out_of_memory(e, config, mode)), 1)
  sys.exit(code)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
