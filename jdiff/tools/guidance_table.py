"""Classifier-free guidance on a class-conditional digits model: how often the requested class
is what jdiff's digits classifier (evaluation/digits_fd.py, trained on real digits) sees, and the
Digits FD of the samples, for each guidance scale w.

Every w samples the same labels (num_samples / 10 of each class, in order) from the same noise,
so rows differ by w alone. Writes <workdir>/guidance/guidance.json (every number printed),
guidance.md and one grid per w (one row per class, 0 at the top).

  python -m jdiff.tools.guidance_table --config=configs/digits_classcond.py \
      --workdir=workdirs/digits_classcond --guidance=0,0.5,1,2,4

Overrides go through --config (e.g. --config.sampling.name=dpm_solver_pp
--config.sampling.steps=20: guidance composes with every sampler).
"""

import os
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jdiff import conditioning
from jdiff import errors
from jdiff import files
from jdiff import images as images_lib
from jdiff import parallel
from jdiff.drivers import sample as sample_driver
from jdiff.evaluation import digits_fd
from jdiff.tools import cli
from jdiff.tools import report

FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/digits_classcond.py",
                                  "Config file of the trained class-conditional digits model.")
  flags.DEFINE_string("workdir", None, "The trained model's workdir.")
  flags.DEFINE_list("guidance", ["0", "1", "2"], "Guidance scales w to sample with.")
  flags.DEFINE_integer("num_samples", 200, "Samples per w (a multiple of the 10 classes).")
  flags.mark_flags_as_required(["workdir"])


def run(config, workdir: str, guidance_scales, num_samples: int) -> dict:
  """{w: accuracy, per-class accuracy, Digits FD, seconds} rows; grids written beside."""
  num_classes = config.model.num_classes
  if conditioning.kind_of(config) != "class" or num_classes != 10:
    raise errors.ConfigError(f"model.num_classes={num_classes}: the guidance table needs a "
                             "class-conditional digits model (10 classes)")
  if num_samples % num_classes or num_samples < 2 * num_classes:
    raise errors.ConfigError(f"--num_samples={num_samples}: must be a multiple of "
                             f"{num_classes} and at least {2 * num_classes}")
  out_dir = os.path.join(workdir, "guidance")
  os.makedirs(out_dir, exist_ok=True)
  mesh = parallel.make_mesh()
  classifier = digits_fd.digits_classifier()
  config = config.copy_and_resolve_references()
  config.sampling.class_label = -1
  wanted = conditioning.sample_labels(config, num_samples)
  rows = []
  for w in guidance_scales:
    config.sampling.guidance = float(w)
    generator = sample_driver.build_generator(config, workdir, mesh, num_samples)
    start = time.perf_counter()
    batches = -(-num_samples // generator.batch_size)
    samples = np.concatenate([generator.sample(i) for i in range(batches)])[:num_samples]
    seconds = time.perf_counter() - start
    as_float = samples.astype(np.float32) / 127.5 - 1.0
    seen = digits_fd.predicted_classes(classifier, as_float)
    per_class = [float(np.mean(seen[wanted == c] == c)) for c in range(num_classes)]
    rows.append({
        "guidance": float(w), "accuracy": float(np.mean(seen == wanted)),
        "per_class_accuracy": per_class, "min_class_accuracy": min(per_class),
        "digits_fd": digits_fd.digits_frechet_distance(as_float),
        "sampling_seconds": seconds, "checkpoint_step": generator.checkpoint_step,
        "network_evaluations": generator.network_evaluations,
        "grid": f"grid_w{w}.png"})
    images_lib.save_grid(samples, os.path.join(out_dir, f"grid_w{w}.png"),
                         num_columns=num_samples // num_classes)
  results = {"config_sampler": config.sampling.name, "steps": config.sampling.steps,
             "num_samples": num_samples, "chance": 1.0 / num_classes,
             "classifier_held_out_accuracy": digits_fd.held_out_accuracy(classifier),
             "rows": rows}
  columns = [report.Column("w", "guidance", ".2g"),
             report.Column("requested class recognised", "accuracy", ".3f"),
             report.Column("worst class", "min_class_accuracy", ".2f"),
             report.Column("Digits FD", "digits_fd", ".2f"),
             report.Column("sampling s", "sampling_seconds", ".1f")]
  title = (f"classifier-free guidance, {num_samples} samples per w ({num_samples // num_classes} "
           f"per class), sampler {config.sampling.name}; chance 0.1; the classifier's held-out "
           f"accuracy on real digits {results['classifier_held_out_accuracy']:.3f}")
  report.print_table(rows, columns, title=title)
  files.write_bytes(os.path.join(out_dir, "guidance.md"),
                    f"{title}\n\n{report.format_markdown_table(rows, columns)}\n".encode())
  report.write_json(os.path.join(out_dir, "guidance.json"), results)
  return results


@cli.one_line_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = cli.load_config(FLAGS["config"])
  run(config, FLAGS.workdir, [float(w) for w in FLAGS.guidance], FLAGS.num_samples)
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
