"""Pretrained models into jdiff workdirs, and jdiff models out to diffusers (docs/pretrained.md).

  python -m jdiff.tools.import_weights --from=diffusers --source=google/ddpm-cifar10-32 --workdir=W
  python -m jdiff.tools.import_weights --from=ddpm_tf --source=path/to/model.ckpt-790000 --workdir=W
  python -m jdiff.tools.import_weights --from=diffwave --source=path/to/1000000.pkl --workdir=W
  python -m jdiff.tools.import_weights --to=diffusers --workdir=W --out=folder

An import writes W/config.py (a jdiff config for the model: use it as --config) and a checkpoint
in the trainer's layout, so that

  python -m jdiff.main --config=W/config.py --workdir=W --mode=sample   (evaluate, likelihood, ...)

samples it with any of jdiff's samplers. The checkpoint's step is the source's training step (1
where it records none) and the config's training.num_steps, so --mode=train finds nothing to
train: raise --config.training.num_steps to fine-tune. --source: for diffusers a local folder (config.json,
diffusion_pytorch_model.safetensors or .bin, scheduler_config.json) or a hub id (downloaded with
huggingface_hub); for ddpm_tf a checkpoint prefix or its folder (tf.train.load_checkpoint); for
diffwave a .pkl / .pt file of the reference code (torch.save of {'model_state_dict': ...}) and
--diffwave_config its config.json. A source config that jdiff's model cannot express is refused
in one line naming the field (exit 2); so is a layout whose weights are not all used, or that
leaves a jdiff weight unset.

--to=diffusers reads W's latest checkpoint (EMA weights) with W/config.py (or --config) and writes
a folder that diffusers' UNet2DModel.from_pretrained / DDPMScheduler.from_pretrained load.
"""

import os

from absl import app
from absl import flags

from jdiff import config_lib
from jdiff.errors import ConfigError
from jdiff.tools import cli

FORMATS = ("diffusers", "ddpm_tf", "diffwave")

FLAGS = flags.FLAGS


def import_model(fmt: str, source: str, workdir: str, **options) -> str:
  """Imports `source` (format fmt) into workdir; returns the config file's path."""
  from jdiff.tools.pretrained import common  # pylint: disable=g-import-not-at-top
  step = options.get("step")
  raw_params = None
  if fmt == "diffusers":
    from jdiff.tools.pretrained import diffusers_format  # pylint: disable=g-import-not-at-top
    folder = diffusers_format.resolve_source(source)
    config, params, where = diffusers_format.load(folder)
    source_step = 1  # diffusers records no training step
  elif fmt == "ddpm_tf":
    from jdiff.tools.pretrained import ddpm_tf  # pylint: disable=g-import-not-at-top
    config, params, raw_params, source_step, where = ddpm_tf.load(
        source, weights=options.get("weights", "ema"), num_groups=options.get("num_groups", 32),
        image_size=options.get("image_size"))
  elif fmt == "diffwave":
    from jdiff.tools.pretrained import diffwave_pt  # pylint: disable=g-import-not-at-top
    config, params, source_step, where = diffwave_pt.load(source, options.get("diffwave_config"))
  else:
    raise ConfigError(f"--from={fmt}: must be one of {list(FORMATS)}")
  step = max(source_step if step is None else step, 1)
  # Trained as far as the source was: --mode=train (and paper_tables, which trains first) finds
  # nothing to do; raise training.num_steps to fine-tune from here.
  config.training.num_steps = step
  header = (f"The jdiff config of {source} (--from={fmt}), written by jdiff.tools.import_weights.\n\n"
            f"  python -m jdiff.main --config={os.path.join(workdir, 'config.py')} "
            f"--workdir={workdir} --mode=sample\n\n"
            f"Weights: {where}, step {step}.")
  return common.write_workdir(workdir, config, params, raw_params, step=step, header=header)


def export_model(workdir: str, out: str, config_path: str = "") -> None:
  from jdiff.tools.pretrained import common  # pylint: disable=g-import-not-at-top
  from jdiff.tools.pretrained import diffusers_format  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(config_path or os.path.join(workdir, "config.py"))
  params, _ = common.load_ema_params(config, workdir)
  diffusers_format.export(config, params, out)


def _define_flags() -> None:
  """The command line; defined only when run as a program, so importing this module (a
  notebook, the tests) leaves absl's flags to jdiff.main."""
  flags.DEFINE_enum("from", None, FORMATS, "Import from this format.")
  flags.DEFINE_enum("to", None, ("diffusers",), "Export the workdir's model to this format.")
  flags.DEFINE_string("source", None, "What to import: a folder, file, checkpoint or hub id.")
  flags.DEFINE_string("workdir", None, "The jdiff workdir (written by an import, read by "
      "an export).")
  flags.DEFINE_string("out", None, "--to: the folder to write.")
  flags.DEFINE_string("config", None, "--to: the workdir's config file (default "
      "<workdir>/config.py).")
  flags.DEFINE_enum("weights", "ema", ("ema", "raw"), "ddpm_tf: which weights sampling "
      "uses (the EMA ones, as the paper's samples, or the raw ones).")
  flags.DEFINE_integer("num_groups", 32, "ddpm_tf: GroupNorm groups of the model (Ho "
      "et al.'s code: 32, which its checkpoints do not record).")
  flags.DEFINE_integer("image_size", None, "ddpm_tf: the model's image size (default: "
      "attention at 16x16, as all of Ho et al.'s models).")
  flags.DEFINE_string("diffwave_config", None, "diffwave: the reference code's "
      "config.json (wavenet_config and diffusion_config).")
  flags.DEFINE_integer("step", None, "The checkpoint step to write, also the config's "
      "training.num_steps (default: the source's training step where it "
      "records one, else 1).")


@cli.one_line_errors
def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]}")
  if (FLAGS["from"].value is None) == (FLAGS["to"].value is None):
    raise ConfigError("give one of --from=<format> (import) or --to=diffusers (export)")
  if not FLAGS["workdir"].value:
    raise ConfigError("--workdir is required")
  if FLAGS["to"].value:
    if not FLAGS["out"].value:
      raise ConfigError("--out: the folder to write is required with --to")
    export_model(FLAGS["workdir"].value, FLAGS["out"].value, FLAGS["config"].value or "")
    print(f"wrote {FLAGS['out'].value} (diffusers UNet2DModel + DDPMScheduler)")
    return 0
  if not FLAGS["source"].value:
    raise ConfigError("--source is required with --from")
  workdir = FLAGS["workdir"].value
  path = import_model(FLAGS["from"].value, FLAGS["source"].value, workdir,
                      weights=FLAGS["weights"].value, num_groups=FLAGS["num_groups"].value,
                      image_size=FLAGS["image_size"].value,
                      diffwave_config=FLAGS["diffwave_config"].value, step=FLAGS["step"].value)
  print(f"wrote {path} and a checkpoint in {workdir}\nsample it: python -m jdiff.main "
        f"--config={path} --workdir={workdir} --mode=sample")
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
