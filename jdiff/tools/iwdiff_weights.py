"""How far from uniform IWDiff's weights are (the HSE coursework, Algorithm 3).

For a trained model (the EMA params of --workdir's latest checkpoint) and real training images,
draws k noises per image at each of a few t, computes line 6's losses and reports the largest
softmax weight per example, with the weights from the summed squared error (the algorithm,
training.iwdiff_weights='sum') and from the per-pixel mean (the ablation). With k = 2 a largest
weight of 0.5 means uniform weights (IWDiff = L_simple averaged over two draws), 1.0 means the
worse draw takes all the weight.

  python -m jdiff.tools.iwdiff_weights --config=configs/quickstart.py --workdir=workdirs/quickstart

Writes <workdir>/iwdiff_weights.json and prints the table.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jdiff import builders
from jdiff import compute as compute_lib
from jdiff import data as data_lib
from jdiff import objectives
from jdiff import parallel
from jdiff.tools import cli
from jdiff.tools import report

FLAGS = flags.FLAGS


def define_flags():
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", "configs/quickstart.py",
                                  "Config file of the trained model (configs/*.py[:variant]).")
  flags.DEFINE_string("workdir", None, "The trained model's workdir.")
  flags.DEFINE_integer("num_images", 256, "Training images scored at each t.")
  flags.DEFINE_integer("k", 2, "Noise draws per image (IWDiff's k).")
  flags.DEFINE_list("fractions", ["0.01", "0.1", "0.3", "0.5", "0.8"], "t / T at which to measure.")
  flags.mark_flags_as_required(["workdir"])


def largest_weights(config, params, images: np.ndarray, t: int, k: int, seed: int = 0) -> dict:
  """Largest weight per example (sorted) with the weights from the sum and from the mean."""
  model = builders.build_model(config)
  diffusion = builders.build_diffusion(config)
  model_fn = builders.make_model_fn(model, params)
  x_start = data_lib.to_float(jnp.asarray(images))
  steps = jnp.full((len(images),), t)

  @compute_lib.for_backend(config).jit
  def draw_losses(key):
    noises = jax.random.normal(key, (k,) + x_start.shape)
    return jnp.stack([objectives.l_simple(diffusion, model_fn, x_start, steps, noise,
                                          config.diffusion.variance_type) for noise in noises])

  per_pixel_mean = draw_losses(jax.random.key(seed))
  dims = objectives.iwdiff_weight_scale("sum", x_start.shape[1:])
  result = {}
  for weights_from in objectives.IWDIFF_WEIGHTS:
    scale = objectives.iwdiff_weight_scale(weights_from, x_start.shape[1:])
    weights = objectives.importance_weights(per_pixel_mean, scale)
    result[weights_from] = np.sort(np.asarray(jnp.max(weights, axis=0)))
  result["summed_loss_gap"] = np.asarray(
      dims * jnp.abs(per_pixel_mean[0] - per_pixel_mean[-1]))
  return result


def measure(config, workdir: str, num_images: int, k: int, fractions) -> list:
  params, step = builders.restore_ema_params(config, workdir, builders.build_model(config),
                                             parallel.make_mesh())
  images = data_lib.BatchStream(data_lib.load_images(config.data), num_images,
                                config.seed).batch(0)
  rows = []
  T = config.diffusion.num_timesteps
  for fraction in fractions:
    t = min(T - 1, int(round(float(fraction) * T)))
    weights = largest_weights(config, params, images, t, k)
    row = {"t": t, "checkpoint_step": step}
    for weights_from in objectives.IWDIFF_WEIGHTS:
      largest = weights[weights_from]
      row.update({f"{weights_from}_median": float(np.median(largest)),
                  f"{weights_from}_p10": float(np.percentile(largest, 10)),
                  f"{weights_from}_p90": float(np.percentile(largest, 90))})
    row["median_summed_loss_gap"] = float(np.median(weights["summed_loss_gap"]))
    rows.append(row)
  return rows


def print_table(rows, config, num_images: int, k: int) -> str:
  cell = lambda prefix: (lambda row: f"{row[prefix + '_median']:.3f} "
                         f"[{row[prefix + '_p10']:.3f}, {row[prefix + '_p90']:.3f}]")
  return report.print_table(
      rows,
      [report.Column("t", "t"), report.Column("sum (Algorithm 3)", cell("sum")),
       report.Column("mean (ablation)", cell("mean")),
       report.Column("|l_1 - l_k| (sum)", "median_summed_loss_gap", ".2f")],
      title=(f"IWDiff largest weight per example, median [10th, 90th percentile]; k={k}, "
             f"{num_images} images of {config.data.source} "
             f"({int(np.prod(builders.image_shape(config)))} values each), "
             f"checkpoint step {rows[0]['checkpoint_step']}; uniform = {1 / k:.2f}"))


@cli.one_line_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = cli.load_config(FLAGS["config"])
  rows = measure(config, FLAGS.workdir, FLAGS.num_images, FLAGS.k, FLAGS.fractions)
  print_table(rows, config, FLAGS.num_images, FLAGS.k)
  report.write_json(os.path.join(FLAGS.workdir, "iwdiff_weights.json"),
                    {"k": FLAGS.k, "num_images": FLAGS.num_images, "rows": rows})
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
