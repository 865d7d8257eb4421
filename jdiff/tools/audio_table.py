"""FastDPM's SC09 table in shape: S in {10, 20, 50} x {VAR, STEP} x {DDPM-rev, DDIM-rev} against
the T-step ancestral sampler, each with seconds per clip and the SC09-classifier FD / IS (jdiff).

  python -m jdiff.tools.audio_table --config=configs/sc09_cpu.py --workdir=workdirs/sc09_cpu
  # the paper-scale model on an accelerator (after training it):
  python -m jdiff.tools.audio_table --config=configs/sc09_diffwave.py --workdir=workdirs/sc09 \
      --num_samples=256 --rounds=3 --reference=/path/to/sc09 (folder or .tar.gz with digit folders)
  # the CPU vocoder (mel-conditioned: every sampler reconstructs the same given clips):
  python -m jdiff.tools.audio_table --config=configs/sc09_vocoder_cpu.py \
      --workdir=workdirs/sc09_vocoder_cpu

Uses the EMA params of the workdir's latest checkpoint. Every sampler draws --num_samples clips
in one batch (config.sampling's other fields apply: clip_x0), timed after compiling (the
compile time is reported apart); --rounds > 1 repeats every sampler in turn (interleaved) and
reports the median and the spread (max - min) of the rounds. A vocoder (diffwave.n_mels > 0)
conditions sample i of every sampler on the mel of the same given clip i (sampling.mel_split, as
--mode=sample), so its rows compare samplers on one reconstruction task, like FastDPM's LJSpeech
vocoder table. The metric is NOT the papers' FID / IS (see jdiff.evaluation.speech_classifier):
compare rows with each other and with the anchors (real clips outside the reference, Gaussian
noise) at the same --num_samples.
Writes <workdir>/audio_table.json and prints the table.
"""

import os
import time

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from jdiff import builders
from jdiff import conditioning as conditioning_lib
from jdiff import config_lib
from jdiff import parallel
from jdiff import sampling
from jdiff.errors import ConfigError
from jdiff.evaluation import speech_classifier
from jdiff.tools import cli
from jdiff.tools import report
from jdiff.tools import timing

FLAGS = flags.FLAGS


def sampler_specs(num_timesteps: int, steps=(10, 20, 50), schedule: str = "quadratic"):
  """(label, builders.build_plan overrides): ancestral first, then FastDPM's grid."""
  specs = [(f"ancestral T={num_timesteps}", dict(name="ancestral"))]
  for s in steps:
    for kind in ("var", "step"):
      kind_schedule = "uniform" if kind == "step" and schedule == "linear" else schedule
      for reverse, kappa in (("DDPM-rev", 1.0), ("DDIM-rev", 0.0)):
        specs.append((f"S={s} {kind.upper()} {reverse}",
                      dict(name="fastdpm", steps=s, fastdpm_kind=kind, schedule=kind_schedule,
                           kappa=kappa)))
  return specs


def run(config, workdir: str, reference: str, num_samples: int, rounds: int, steps, schedule: str
        ) -> dict:
  mesh = parallel.make_mesh()
  model = builders.build_model(config)
  diffusion = builders.build_diffusion(config)
  params, checkpoint_step = builders.restore_ema_params(config, workdir, model, mesh)
  scorer = speech_classifier.Scorer(reference)
  logging.info("speech classifier: held-out accuracy %.3f (%d train / %d held-out clips)",
               scorer.held_out_accuracy, scorer.num_train, scorer.num_held_out)
  shape = builders.image_shape(config)
  cond, conditioning = None, "none (unconditional)"
  if conditioning_lib.kind_of(config) == "mel":
    cond = conditioning_lib.sampling_cond(config, num_samples)
    source = config.data.path or config.data.source
    conditioning = (f"mels of the first {num_samples} clips of {source} split "
                    f"{config.sampling.mel_split!r} (reconstruction)")
  sample_fns, rows = {}, []
  for label, overrides in sampler_specs(config.diffusion.num_timesteps, steps, schedule):
    plan = builders.build_plan(config, diffusion, **overrides)
    sampler = lambda model_fn, x_T, key, plan=plan: sampling.run_plan(plan, model_fn, x_T, key)
    sample_fns[label] = builders.make_sample_fn(sampler, model, mesh, shape, num_samples)
    rows.append({"sampler": label, "network_evaluations": plan.num_evaluations, "times": []})
  compiled, outputs = {}, {}
  for round_index in range(rounds):  # interleaved: every sampler once per round
    for row in rows:
      label = row["sampler"]
      if label not in compiled:
        stats, compiled[label] = timing.compile_only(sample_fns[label],
                                                     (params, jax.random.key(0), cond))
        row["compile_s"] = stats["compile_s"]
      start = time.perf_counter()
      out = jax.block_until_ready(compiled[label](params, jax.random.key(round_index), cond))
      row["times"].append((time.perf_counter() - start) / num_samples)
      if round_index == 0:
        outputs[label] = np.asarray(jax.device_get(out))
        row.update(scorer(outputs[label], config.data.sample_rate))
      logging.info("%s: %.4f s/clip", label, row["times"][-1])
  for row in rows:
    times = row.pop("times")
    row["seconds_per_clip"] = float(np.median(times))
    row["spread_s"] = float(np.max(times) - np.min(times)) if len(times) > 1 else None
  anchors = scorer.anchors(num_samples)
  rows += [dict(sampler=f"anchor: {name} clips", **values) for name, values in anchors.items()]
  results = {"device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
             "config": config.to_dict(), "checkpoint_step": checkpoint_step,
             "num_samples": num_samples, "rounds": rounds, "schedule": schedule,
             "conditioning": conditioning,
             "classifier_held_out_accuracy": scorer.held_out_accuracy,
             "classifier_train_clips": scorer.num_train, "reference": reference, "rows": rows}
  report.write_json(os.path.join(workdir, "audio_table.json"), results)
  print_table(results)
  return results


def print_table(results: dict) -> str:
  fd, inception = speech_classifier.FD_NAME, speech_classifier.IS_NAME
  return report.print_table(
      results["rows"],
      [report.Column("sampler", "sampler"), report.Column("NFE", "network_evaluations"),
       report.Column("s/clip (median)", "seconds_per_clip", ".3f"),
       report.Column("spread s", "spread_s", ".3f"),
       report.Column(fd, fd, ".3f"), report.Column(inception, inception, ".3f"),
       report.Column("voicing", speech_classifier.VOICING_NAME, ".2f")],
      title=(f"device: {results['device']} x{results['num_devices']}; checkpoint step "
             f"{results['checkpoint_step']}; {results['num_samples']} clips per sampler, "
             f"{results['rounds']} round(s); schedule {results['schedule']}"),
      notes=[f"conditioning: {results.get('conditioning', 'none (unconditional)')}",
             f"classifier held-out accuracy {results['classifier_held_out_accuracy']:.3f} "
             f"({results['classifier_train_clips']} training clips); not the papers' FID/IS"])


def main(argv):
  del argv
  config = cli.load_config(FLAGS["config"])
  config_lib.validate(config)
  if config.data.kind != "audio":
    raise ConfigError(f"config.data.kind={config.data.kind!r}: audio_table needs 'audio'")
  steps = tuple(int(s) for s in FLAGS.steps)
  run(config, FLAGS.workdir, FLAGS.reference, FLAGS.num_samples, FLAGS.rounds, steps,
      FLAGS.schedule)
  return 0


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", "configs/sc09_cpu.py", "An audio config file.")
  flags.DEFINE_string("workdir", None, "The trained model's workdir.", required=True)
  flags.DEFINE_string("reference", None,
                      "Labelled SC09 clips (folder or .tar.gz with zero..nine folders): the "
                      "classifier's training data and the reference clips.", required=True)
  flags.DEFINE_integer("num_samples", 16, "Clips per sampler (one batch).")
  flags.DEFINE_integer("rounds", 1, "Timed rounds over all samplers (interleaved).")
  flags.DEFINE_list("steps", ["10", "20", "50"], "FastDPM's S values.")
  flags.DEFINE_enum("schedule", "quadratic", ["linear", "quadratic"],
                    "FastDPM's VAR / STEP schedule ('linear' means 'uniform' for STEP).")
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
