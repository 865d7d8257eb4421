"""One command per results table of the papers: train (or resume) the model(s), evaluate every row
with --mode=evaluate's machinery, and write the table as markdown, JSON and a plot.

  python -m jdiff.tools.paper_tables --table=samplers --config=configs/cifar10_cpu.py \\
      --workdir=workdirs/cifar10_cpu --num_samples=500
  python -m jdiff.tools.paper_tables --table=depth --config=configs/cifar10_adaptive.py \\
      --workdir=workdirs/cifar10_adaptive

  python -m jdiff.tools.paper_tables --table=objectives --config=configs/quickstart.py \\
      --workdir=workdirs/objectives --config.evaluation.metrics=digits_fd
  python -m jdiff.tools.paper_tables --table=surrogate --config=configs/surrogate_sweep.py \\
      --workdir=workdirs/quickstart --config.evaluation.metrics=digits_fd
  # Table 1's sweep on the digits (the schemes' models, each at every c):
  python -m jdiff.tools.paper_tables --table=depth --config=configs/quickstart_adaptive.py \\
      --workdir=workdirs/depth_digits --schemes=random,bucketed \\
      --config.evaluation.metrics=fid,kid,digits_fd

Tables (TABLES):
  samplers  FastDPM review Tables 1-2 shape: DDPM ancestral (T steps), respaced (even), DDIM
            eta 0 and 1, FastDPM {VAR, STEP} x {DDPM-rev (kappa 1), DDIM-rev (kappa 0)},
            DPM-Solver++ 2M, UniPC bh1 (every registered sampler's table rows, jdiff/samplers.py),
            each at S in --steps: s/image, FID, KID (and Digits FD when configured). One model.
  depth     adaptive U-Net paper Tables 1-3 shape: skip type x c (depth.power): FID, KID,
            s/image and the time saved against c = 0 of the same model. One model per skip type
            and training scheme of --schemes (random: one model serves every c; bucketed: batches
            drawn by k(t) at c = --bucketed_power, Table 3's model), plus the baseline trained at
            full depth and sampled at every c with zero skipping (the paper's "DDPM" row).
  objectives  DDPM study (the HSE coursework) Table 4.4 shape: one model per objective of
            OBJECTIVE_SETUPS (DDPM L_simple, Hybrid, Importance Sampling, IS +2,
            IWDiff, IWDiff + IS), each trained from the same config: train time relative to DDPM
            (wall-clock seconds per step of the steps this command trained, compilation
            excluded; n/a for a model trained before), FID / KID / Digits FD, and the paper's
            ratio and FID.
  surrogate  DDPM study Table 4.5 shape: the config's DDPM over all T steps against Algorithm 4
            started from config.surrogate (kind, config, workdir) at each config.surrogate.t_mids:
            samples/s, network evaluations of both models, FID / KID / Digits FD. The surrogate
            model is trained (or resumed; nothing when finished) first, with its own config file.

Each row is one evaluation: <model workdir>/eval/<table>-<row>/step_<step>/metrics.json (the
samples are kept, so an interrupted table resumes; a row whose samples and scoring are unchanged
keeps its metrics.json, so rows added later cost only themselves), scored with config.evaluation
(metrics, Inception weights, fid_preprocessing, reference statistics, num_samples; --num_samples
overrides). Written under <workdir>/tables/: <table>.md (the table, the command, checkpoint
steps, sample counts, wall-clock, the device), <table>.json (every row's metrics.json) and
<table>.png. Any config field: --config.<field>=<value>. Sharding and multi-host: as
--mode=evaluate (launch/README.md).
"""

import dataclasses
import json
import os
import shlex
import sys
import time
from typing import Callable, Dict, List, Mapping, Sequence

from jdiff import console

console.quiet_startup()  # before TensorFlow or jax load

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags, logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from jdiff import checkpoint as checkpoint_lib
from jdiff import compute
from jdiff import config_lib
from jdiff import files
from jdiff import parallel
from jdiff import samplers
from jdiff.drivers import evaluate as evaluate_lib
from jdiff.drivers import train as train_lib
from jdiff.tools import cli
from jdiff.tools import plots
from jdiff.tools import report

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of a table: a trained model (a sub-workdir and the fields it is trained with) and
  the sampling fields of this evaluation."""
  name: str                 # evaluation folder: <table>-<name>
  label: str                # the table's first column, and the plot's curve
  x: float                  # the plot's x value (S, or c)
  fields: Mapping[str, object]  # config fields of this evaluation ("sampling.steps": 10, ...)
  model: str = ""           # sub-workdir of the model; "" = --workdir itself
  training: Mapping[str, object] = dataclasses.field(default_factory=dict)  # fields it trains with


@dataclasses.dataclass(frozen=True)
class Table:
  title: str
  rows: Callable[[object, Mapping], List[Row]]   # (config, settings) -> rows
  columns: Sequence[report.Column]
  x_label: str
  log_x: bool = False
  time_saved: bool = False  # add 1 - s/image / s/image at c = 0 of the same model
  # (config, workdir) of models the rows need besides their own (the surrogate), trained first.
  prerequisites: Callable[[object], List[tuple]] = lambda config: []


# ----------------------------------------------------------------------------------------------
# The sampler table


def _sampling(**fields) -> Dict[str, object]:
  return {f"sampling.{key}": value for key, value in fields.items()}


def sampler_rows(config, settings: Mapping) -> List[Row]:
  """FastDPM review Tables 1-2: every registered sampler's table rows (jdiff/samplers.py) at
  every S of settings["steps"] (DDPM at T)."""
  T = config.diffusion.num_timesteps  # pylint: disable=invalid-name
  # DDPM costs T evaluations a sample: settings["ddpm_num_samples"] > 0 gives it fewer samples
  # than the other rows, 0 leaves it out, < 0 gives it the others' number.
  ddpm_samples = settings["ddpm_num_samples"]
  rows = [] if ddpm_samples == 0 else [Row(
      "ddpm", f"DDPM ancestral (T={T})", T,
      {**_sampling(name="ancestral"),
       **({"evaluation.num_samples": ddpm_samples} if ddpm_samples > 0 else {})})]
  chosen = settings.get("samplers") or list(samplers.REGISTRY)
  for name in chosen:
    if name not in samplers.REGISTRY:
      raise config_lib.ConfigError(f"--samplers={','.join(chosen)}: {name!r} is not one of "
                                   f"{list(samplers.REGISTRY)}")
  for steps in settings["steps"]:
    if steps > T:
      raise config_lib.ConfigError(f"--steps={steps}: must be <= diffusion.num_timesteps ({T})")
    for sampler in (samplers.REGISTRY[name] for name in chosen):
      rows += [Row(key, label, steps, _sampling(**fields))
               for key, label, fields in sampler.table_rows(config, steps, settings)]
  return rows


# ----------------------------------------------------------------------------------------------
# The adaptive-depth table


DEPTH_SCHEMES = ("random", "bucketed")


def depth_rows(config, settings: Mapping) -> List[Row]:
  """Adaptive U-Net paper Tables 1-3: skip type x c, one model per skip type and training scheme
  of settings["schemes"] (random: k uniform per batch; bucketed: batches drawn by k(t) at
  c = settings["bucketed_power"], the paper's model "trained on zero skipping for c=2", Table 3),
  each sampled at every c of settings["powers"]. The baseline is a model trained at full depth,
  sampled at every c with zero skipping (Table 1's first row, "DDPM": a pre-trained model never
  trained to skip)."""
  del config
  for scheme in settings["schemes"]:
    if scheme not in DEPTH_SCHEMES:
      raise config_lib.ConfigError(f"--schemes={','.join(settings['schemes'])}: each must be one "
                                   f"of {list(DEPTH_SCHEMES)}")
  baseline = {"depth.training": "full", "model.skip_type": "zero"}
  rows = [Row(f"full-c{power:g}", "full depth (zero skip at sampling)", power,
              {"depth.power": power}, model="full", training=baseline)
          for power in settings["powers"]]
  bucketed_power = float(settings["bucketed_power"])
  for skip in settings["skip_types"]:
    for scheme in settings["schemes"]:
      training = {"model.skip_type": skip, "depth.training": scheme}
      name, label = skip, f"{skip} skip"
      if scheme == "bucketed":
        training["depth.power"] = bucketed_power
        name = f"{skip}-bucketed-c{bucketed_power:g}"
        label = f"{skip} skip, bucketed at c={bucketed_power:g}"
      rows += [Row(f"{name}-c{power:g}", label, power, {"depth.power": power},
                   model=f"skip-{name}", training=training) for power in settings["powers"]]
  return rows


# ----------------------------------------------------------------------------------------------
# The objectives table


def _slug(name: str) -> str:
  return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


# The rows of Table 4.4 (the HSE coursework): setup -> config overrides. Hybrid (L_simple
# + 0.001 L_vlb with learned variances, improved DDPM) is not in the paper's table; Importance
# Sampling +2 makes two extra forward-only loss-history updates per step; IWDiff draws
# training.iwdiff_k noises (the paper: 2).
OBJECTIVE_SETUPS = {
    "DDPM": {},
    "Hybrid (learned variances)": {"training.loss": "hybrid",
                                   "diffusion.variance_type": "learned_range"},
    "Importance Sampling": {"training.timestep_sampler": "loss_aware"},
    "Importance Sampling +2": {"training.timestep_sampler": "loss_aware",
                               "training.extra_updates": 2},
    "IWDiff": {"training.loss": "iwdiff"},
    "IWDiff + Importance Sampling": {"training.loss": "iwdiff",
                                     "training.timestep_sampler": "loss_aware"},
}
# Table 4.4 (CIFAR-10, 150k steps): (train time ratio, FID).
OBJECTIVES_PAPER = {
    "DDPM": (1.00, 4.93), "Importance Sampling": (1.60, 4.09),
    "Importance Sampling +2": (2.13, 4.33), "IWDiff": (2.40, 3.69),
    "IWDiff + Importance Sampling": (2.91, 3.42),
}


def objective_rows(config, settings: Mapping) -> List[Row]:
  """DDPM study Table 4.4: one model per objective of OBJECTIVE_SETUPS, each sampled with the
  config's sampler."""
  del config, settings
  return [Row(_slug(name), name, i, {}, model=f"objective-{_slug(name)}", training=overrides)
          for i, (name, overrides) in enumerate(OBJECTIVE_SETUPS.items())]


def _add_train_time_ratio(results: List[dict]) -> None:
  """train_time_ratio = a row's training seconds per step / the DDPM row's; the paper's numbers."""
  base = next((r.get("train_seconds_per_step") for r in results if r["label"] == "DDPM"), None)
  for r in results:
    if base and r.get("train_seconds_per_step"):
      r["train_time_ratio"] = r["train_seconds_per_step"] / base
    if r["label"] in OBJECTIVES_PAPER:
      r["paper_train_time_ratio"], r["paper_fid"] = OBJECTIVES_PAPER[r["label"]]


# ----------------------------------------------------------------------------------------------
# The surrogate table


def surrogate_rows(config, settings: Mapping) -> List[Row]:
  """DDPM study Table 4.5: the DDPM over all T steps, then Algorithm 4 from config.surrogate at
  each t_mid of config.surrogate.t_mids (t_mid = 0: the surrogate's samples alone)."""
  del settings
  kind = config.surrogate.kind
  if kind == "none":
    raise config_lib.ConfigError(
        "config.surrogate.kind='none': the surrogate table needs a surrogate (sngan | ddpm; e.g. "
        "configs/surrogate_sweep.py, configs/cifar10_surrogate.py)")
  T = config.diffusion.num_timesteps  # pylint: disable=invalid-name
  name = os.path.splitext(os.path.basename(config.surrogate.config.partition(":")[0]))[0]
  rows = [Row("ddpm", f"DDPM (T={T}, no surrogate)", T, {"surrogate.kind": "none"})]
  rows += [Row(f"{kind}-tmid{t_mid}", f"{kind} ({name})", t_mid, {"surrogate.t_mid": t_mid})
           for t_mid in config.surrogate.t_mids]
  return rows


def surrogate_prerequisites(config) -> List[tuple]:
  """The surrogate model (its config file, its workdir) of the surrogate table."""
  return [(config_lib.load_config(config.surrogate.config), config.surrogate.workdir)]


_QUALITY_COLUMNS = (
    report.Column("FID", "fid", ".2f"),
    report.Column("KID x1e3", lambda r: None if "kid" not in r else
                  f"{1e3 * r['kid']:.2f} ± {1e3 * r['kid_std']:.2f}"),
    report.Column("Digits FD", "digits_fd", ".3f"),
)

TABLES: Dict[str, Table] = {
    "samplers": Table(
        "Samplers: quality against network evaluations (FastDPM review, Tables 1-2 shape)",
        sampler_rows,
        (report.Column("sampler", "label"), report.Column("S", "network_evaluations"),
         report.Column("s/image", "seconds_per_sample", ".4f")) + _QUALITY_COLUMNS +
        (report.Column("samples", "num_samples"),),
        "network evaluations S", log_x=True),
    "depth": Table(
        "Adaptive depth: skip type x c (adaptive U-Net paper, Tables 1-3 shape)",
        depth_rows,
        (report.Column("skip type", "label"), report.Column("c", "x", "g"),
         report.Column("s/image", "seconds_per_sample", ".4f"),
         report.Column("time saved", "time_saved", ".1%")) + _QUALITY_COLUMNS,
        "c (depth.power)", time_saved=True),
    "objectives": Table(
        "Objectives: one model per training objective (DDPM study, Table 4.4 shape)",
        objective_rows,
        (report.Column("setup", "label"),
         report.Column("train time ratio", "train_time_ratio", ".2f"),
         report.Column("train s/step", "train_seconds_per_step", ".4f"),
         report.Column("train steps", "checkpoint_step")) + _QUALITY_COLUMNS +
        (report.Column("paper time ratio", "paper_train_time_ratio", ".2f"),
         report.Column("paper FID", "paper_fid", ".2f")),
        "setup (row)"),
    "surrogate": Table(
        "Surrogate diffusion: start at t_mid from a cheaper model (DDPM study, Table 4.5 shape)",
        surrogate_rows,
        (report.Column("model", "label"), report.Column("t_mid", "x", "g"),
         report.Column("samples/s", lambda r: 1 / r["seconds_per_sample"], ".3f"),
         report.Column("DDPM evaluations", "network_evaluations"),
         report.Column("surrogate evaluations", "surrogate_network_evaluations"),
         report.Column("cost in full-resolution steps", "full_resolution_steps", ".1f"))
        + _QUALITY_COLUMNS,
        "t_mid", prerequisites=surrogate_prerequisites),
}


# ----------------------------------------------------------------------------------------------
# Running a table


def _with_fields(config, fields: Mapping[str, object]):
  """A copy of config with the dotted fields set ("sampling.steps": 10), validated."""
  config = config.copy_and_resolve_references()
  for field, value in fields.items():
    *sections, name = field.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[name] = value
  config_lib.validate(config)
  return config


DEFAULT_SETTINGS = {"steps": (10, 20, 50, 100), "fastdpm_schedule": "quadratic",
                    "ddpm_num_samples": -1,
                    "skip_types": ("zero", "duplicate", "interpolate"), "powers": (0, 1, 2, 3, 5),
                    "schemes": ("random",), "bucketed_power": 2.0,
                    "label": ""}


def run_table(name: str, config, workdir: str, settings: Mapping = None, command: str = "") -> str:
  """Trains what the table's rows need, evaluates each row, writes the table; returns the .md.
  settings: DEFAULT_SETTINGS' keys (the command's flags)."""
  table = TABLES[name]
  settings = {**DEFAULT_SETTINGS, **(settings or {})}
  rows = table.rows(config, settings)
  start = time.time()
  for prerequisite_config, prerequisite_workdir in table.prerequisites(config):
    _train(prerequisite_config, prerequisite_workdir)
  trained, train_timing = {}, {}
  for row in rows:
    if row.model in trained:
      continue
    model_workdir = os.path.join(workdir, row.model)
    trained[row.model], train_timing[row.model] = _train(_with_fields(config, row.training),
                                                         model_workdir)
  train_seconds = time.time() - start

  results = []
  for i, row in enumerate(rows):
    row_config = _with_fields(config, {**row.training, **row.fields})
    row_config.evaluation.name = f"{name}-{row.name}"
    logging.info("paper_tables: row %d/%d: %s (x=%g)", i + 1, len(rows), row.label, row.x)
    metrics = evaluate_lib.evaluate(row_config, os.path.join(workdir, row.model))
    results.append(dict(metrics, label=row.label, x=row.x, model=row.model or ".",
                        **train_timing[row.model]))
    if table.time_saved:
      _add_time_saved(results)
    if name == "objectives":
      _add_train_time_ratio(results)
    # Rewritten after every row: a long table shows (and keeps) what is done so far.
    run = {"train_seconds": train_seconds, "evaluate_seconds": time.time() - start - train_seconds,
           "checkpoint_steps": trained, "label": settings["label"], "command": command,
           "rows_done": f"{i + 1}/{len(rows)}"}
    path = write_table(name, results, workdir, run, announce=i + 1 == len(rows))
  return path


TRAIN_TIMING = "paper_tables_train_timing.json"


def _train(config, workdir: str):
  """Trains (or resumes) config's model in workdir (an SNGAN with its own trainer); exits as the
  training did when a signal stopped it. Returns (checkpoint step, {train_seconds_per_step}):
  the wall-clock seconds per step of the steps trained by this command's calls, accumulated in
  <workdir>/paper_tables_train_timing.json ({} when none were timed). For a diffusion model the
  stepping time of the train loop (TrainResult.stepping_seconds: compilation, data loading and
  restoring excluded, checkpoint saves included); the SNGAN's trainer reports none, so its whole
  call is timed."""
  if config.model.kind == "sngan":
    from jdiff.drivers import gan_train as trainer  # pylint: disable=g-import-not-at-top
  else:
    trainer = train_lib
  timing_path = os.path.join(workdir, TRAIN_TIMING)
  timing = {"timed_steps": 0, "seconds": 0.0}
  if files.exists(timing_path):
    timing = json.loads(files.read_text(timing_path))
  checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
  steps = checkpointer.all_steps()
  checkpointer.close()
  logging.info("paper_tables: training %s (to step %d)", workdir, config.training.num_steps)
  start = time.time()
  result = trainer.train(config, workdir)
  if result.interrupted_by:  # checkpoint saved: the same command resumes
    print(f"stopped by {result.interrupted_by} while training {workdir} (step "
          f"{result.step}); run the same command to resume", file=sys.stderr)
    sys.exit(result.exit_code)
  if config.model.kind == "sngan":
    steps_now, seconds = result.step - (steps[-1] if steps else 0), time.time() - start
  else:
    steps_now, seconds = result.steps_trained, result.stepping_seconds
  if steps_now > 0:
    timing = {"timed_steps": timing["timed_steps"] + steps_now,
              "seconds": timing["seconds"] + seconds}
    if jax.process_index() == 0:
      files.write_json(timing_path, timing)
  if not timing["timed_steps"]:
    return result.step, {}
  return result.step, {"train_seconds_per_step": timing["seconds"] / timing["timed_steps"]}


def _add_time_saved(results: List[dict]) -> None:
  """time_saved = 1 - s/image / s/image at c = 0 of the same model (depth rows only)."""
  base = {r["model"]: r["seconds_per_sample"] for r in results if r.get("depth_power") == 0}
  for r in results:
    if "depth_power" in r and r["model"] in base:
      r["time_saved"] = 1 - r["seconds_per_sample"] / base[r["model"]]


def write_table(name: str, results: List[dict], workdir: str, run: Mapping,
                announce: bool = True) -> str:
  """<workdir>/tables/<name>.md, .json and .png from the rows' metrics and run (run_table's);
  prints the markdown when announce."""
  table = TABLES[name]
  out = os.path.join(workdir, "tables")
  png = os.path.join(out, f"{name}.png")
  y_key = next((k for k in ("fid", "digits_fd", "kid") if all(k in r for r in results)), None)
  if y_key is not None:
    plots.plot_tradeoff([dict(r, **{table.x_label: r["x"]}) for r in results], table.x_label,
                        y_key, png, title=table.title.split(":")[0], log_x=table.log_x)
  first = results[0]
  notes = [
      f"**{run['label']}**" if run["label"] else "",
      f"Command: `{run['command']}`" if run["command"] else "",
      f"Checkpoint steps: {json.dumps(run['checkpoint_steps'])}; samples per row: "
      f"{sorted({r['num_samples'] for r in results})}; device: {first['device']} x{first['num_devices']}.",
      f"Wall-clock: training {run['train_seconds'] / 60:.1f} min (0 when resumed), evaluation "
      f"{run['evaluate_seconds'] / 60:.1f} min (kept samples are not re-made, kept scores not "
      "redone); rows done: "
      f"{run.get('rows_done', len(results))}.",
      (f"FID/KID: FID Inception-v3 pool3, preprocessing {first['fid_preprocessing']!r}, weights "
       f"{first['inception_weights']}, reference {first.get('fid_reference', 'the data set')}."
       if "fid_preprocessing" in first else ""),
      "Each row's metrics.json: <model workdir>/eval/<table>-<row>/step_<step>/metrics.json "
      f"(all of them in {name}.json).",
  ]
  plot_axes = f"{y_key} against {table.x_label}"
  # Metrics not computed for any row (e.g. FID in a Digits FD table) get no column.
  columns = [column for column in table.columns
             if any(report.format_markdown_table([r], [column]).splitlines()[-1] != "| n/a |"
                    for r in results)]
  markdown = "\n".join([f"## {table.title}", "",
                        report.format_markdown_table(results, columns), "",
                        *[f"- {note}" for note in notes if note],
                        *([f"\n![{name}: {plot_axes}]({name}.png)"] if y_key else [])]) + "\n"
  if jax.process_index() == 0:
    path = os.path.join(out, f"{name}.md")
    files.write_bytes(path, markdown.encode())
    report.write_json(os.path.join(out, f"{name}.json"), {"run": run, "rows": results},
                      announce=announce)
    if announce:
      print(markdown, flush=True)
  return os.path.join(out, f"{name}.md")


def define_flags():
  """The program's flags (not defined on import, so that the tools import side by side)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).")
  flags.DEFINE_string("workdir", None, "Checkpoints, evaluations and tables/.")
  flags.DEFINE_enum("table", None, list(TABLES), "Which table.")
  flags.DEFINE_integer("num_samples", 0, "Samples per row (0: config.evaluation.num_samples).")
  flags.DEFINE_list("steps", ["10", "20", "50", "100"], "samplers: S values.")
  flags.DEFINE_integer("ddpm_num_samples", -1, "samplers: samples of the DDPM (T steps) row: "
                       "-1 as every row, 0 leaves the row out, N > 0: N samples.")
  flags.DEFINE_enum("fastdpm_schedule", "quadratic", ["uniform", "quadratic"],
                    "samplers: FastDPM schedule (VAR: uniform = linear variances).")
  flags.DEFINE_list("skip_types", ["zero", "duplicate", "interpolate"], "depth: skip types.")
  flags.DEFINE_list("powers", ["0", "1", "2", "3", "5"], "depth: values of c.")
  flags.DEFINE_list("schemes", ["random"], f"depth: training schemes, from {list(DEPTH_SCHEMES)}.")
  flags.DEFINE_float("bucketed_power", 2.0, "depth: the c that bucketed training buckets by "
                     "(the paper's 2).")
  flags.DEFINE_list("samplers", [], "samplers: the registered samplers whose rows to run "
                    "(default: all; e.g. dpm_solver_pp,unipc).")
  flags.DEFINE_string("label", "", "A line the table and plot carry, e.g. 'CPU-scale, contended'.")
  flags.mark_flags_as_required(["config", "workdir", "table"])


@cli.one_line_errors
def main(argv):
  del argv
  console.quiet_absl_handler()
  config = cli.load_config(FLAGS["config"])
  # A pod / SLURM job: every process; the host settings and jax.distributed precede the backend.
  compute.start(config, lambda: parallel.maybe_initialize_distributed(config.distributed))
  if FLAGS.num_samples:
    config.evaluation.num_samples = FLAGS.num_samples
  config_lib.validate(config)
  settings = {"steps": _numbers("steps", FLAGS.steps, int),
              "powers": _numbers("powers", FLAGS.powers, float),
              "fastdpm_schedule": FLAGS.fastdpm_schedule, "skip_types": FLAGS.skip_types,
              "schemes": FLAGS.schemes, "bucketed_power": FLAGS.bucketed_power,
              "ddpm_num_samples": FLAGS.ddpm_num_samples, "samplers": FLAGS.samplers,
              "label": FLAGS.label}
  command = shlex.join(["python", "-m", "jdiff.tools.paper_tables"] + sys.argv[1:])
  run_table(FLAGS.table, config, FLAGS.workdir, settings, command)
  return 0


def _numbers(flag: str, values: Sequence[str], kind: Callable) -> List:
  try:
    return [kind(value) for value in values]
  except ValueError:
    raise config_lib.ConfigError(f"--{flag}={','.join(values)}: must be a list of "
                                 f"{kind.__name__} numbers") from None


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
