"""The architectures of Table 4.3 of papers/hse_coursework.txt, selectable by config.model.preset.

A preset sets the four fields that the table varies (block type, channel multipliers, residual
blocks per resolution, base channels); everything else (attention at 16x16, dropout, groups)
stays the config's. `config_lib.validate` writes a preset's fields into config.model, so the
preset wins over values set for those fields.
"""

PRESETS = {
    "Default": dict(block_type="res", ch_mult=(1, 2, 2, 2), num_res_blocks=2, ch=128),
    "DeepRes1": dict(block_type="res", ch_mult=(1, 2, 2, 2), num_res_blocks=1, ch=128),
    "ShallowRes2": dict(block_type="res", ch_mult=(1, 2, 2), num_res_blocks=2, ch=128),
    "ShallowRes1": dict(block_type="res", ch_mult=(1, 2, 2), num_res_blocks=1, ch=128),
    "MBConv64": dict(block_type="mbconv", ch_mult=(1, 2, 2, 2), num_res_blocks=2, ch=64),
    "MBConv96": dict(block_type="mbconv", ch_mult=(1, 2, 2, 2), num_res_blocks=2, ch=96),
}

# Table 4.3's "Parameters, M" column (CIFAR-10, 32x32), for comparison with ours.
PAPER_PARAMETERS_M = {
    "Default": 34.21, "DeepRes1": 23.27, "ShallowRes2": 24.76, "ShallowRes1": 17.02,
    "MBConv64": 11.51, "MBConv96": 25.68,
}


def apply_preset(model_config) -> None:
  """Writes the fields of model_config.preset (if set) into model_config, in place."""
  if model_config.preset:
    for field, value in PRESETS[model_config.preset].items():
      model_config[field] = value


def parameter_counts(config) -> dict:
  """{preset name: parameter count} for config's data and diffusion (shapes only, no compute)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jdiff import train  # pylint: disable=g-import-not-at-top  (train imports the models)
  from jdiff.models import build_model  # pylint: disable=g-import-not-at-top
  counts = {}
  for name in PRESETS:
    preset_config = config.copy_and_resolve_references()
    preset_config.model.preset = name
    apply_preset(preset_config.model)
    shapes = jax.eval_shape(lambda c=preset_config: train.init_params(build_model(c), c,
                                                                       jax.random.key(0)))
    counts[name] = sum(x.size for x in jax.tree.leaves(shapes))
  return counts
