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
import logging as std_logging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jdiff import config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs, samples and bench.json.")
_MODE = flags.DEFINE_enum("mode", "train", config_lib.MODES, "What to do.")
flags.mark_flags_as_required(["config"])


def _quiet_orbax_info(record: std_logging.LogRecord) -> bool:
  """Orbax logs every save step at INFO; keep its warnings only."""
  return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _fail(message: str, code: int):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def main(argv):
  del argv
  config, mode, workdir = _CONFIG.value, _MODE.value, _WORKDIR.value
  logging.get_absl_handler().addFilter(_quiet_orbax_info)
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    _fail(str(e), 2)
  if mode != "summary" and not workdir:
    _fail(f"--workdir is required for --mode={mode}", 2)
  if mode in ("sample", "evaluate") and config.model.kind == "sngan":
    _fail(f"--mode={mode} runs a diffusion model; an SNGAN (config.model.kind='sngan') serves as "
          "config.surrogate of one", 2)

  # Imported after validation so a bad value fails before anything heavy loads.
  from jdiff import data, evaluate, generate, parallel, train  # pylint: disable=g-import-not-at-top
  from jdiff.models import build_model, parameter_table  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize_distributed(config.distributed)

  try:
    if mode == "train" and config.model.kind == "sngan":
      from jdiff import gan_train  # pylint: disable=g-import-not-at-top
      gan_train.train(config, workdir)
      print(f"trained SNGAN to step {config.training.num_steps}; checkpoints in {workdir}/checkpoints")
    elif mode == "train":
      train.train(config, workdir)
      print(f"trained to step {config.training.num_steps}; checkpoints in {workdir}/checkpoints")
    elif mode == "sample":
      grid = generate.generate(config, workdir)
      print(f"samples: {workdir}/samples/samples.npz\ngrid: {grid}")
    elif mode == "evaluate":
      results = evaluate.evaluate(config, workdir)
      print(json.dumps({key: value for key, value in results.items() if key != "sampling"}, indent=2))
    elif mode == "reference_stats":
      path = evaluate.reference_statistics(config, workdir)
      print(f"reference statistics: {path}\nuse them with --config.evaluation.reference_stats={path}")
    elif mode == "summary":
      params = jax.eval_shape(lambda: train.init_params(build_model(config), config, jax.random.key(0)))
      table = parameter_table(params)
      width = max(len(name) for name, _ in table)
      for name, count in table:
        print(f"  {name:<{width}}  {count:>12,}")
      print(f"parameters: {sum(count for _, count in table)}")
      if config.model.preset:
        from jdiff.models import presets  # pylint: disable=g-import-not-at-top
        print("Table 4.3 presets (parameters here | paper, M):")
        for name, count in presets.parameter_counts(config).items():
          print(f"  {name:<12}  {count:>12,}  |  {presets.PAPER_PARAMETERS_M[name]:.2f}")
    elif mode == "bench":
      from jdiff import bench  # pylint: disable=g-import-not-at-top
      bench.run(config, workdir)
  except (data.DataError, generate.NoCheckpointError, evaluate.EvaluationError) as e:
    _fail(str(e), 1)
  except train.NonFiniteLossError as e:
    logging.error("%s", e)
    _fail(str(e), 3)


if __name__ == "__main__":
  app.run(main)
