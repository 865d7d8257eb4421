"""Networks: the DDPM U-Net (with shortcut depth) and its building blocks."""

import jax.numpy as jnp

from jdiff.models.unet import UNet


def output_channels(config) -> int:
  """Learned variances (improved DDPM) need a second set of C channels."""
  factor = 2 if config.diffusion.variance_type == "learned_range" else 1
  return config.data.num_channels * factor


def build_model(config) -> UNet:
  model = config.model
  return UNet(
      ch=model.ch, ch_mult=tuple(model.ch_mult), num_res_blocks=model.num_res_blocks,
      attn_resolutions=tuple(model.attn_resolutions), dropout=model.dropout,
      out_ch=output_channels(config), num_groups=model.num_groups, skip_type=model.skip_type,
      block_type=model.block_type, remat=model.remat, dtype=jnp.dtype(model.dtype))


def parameter_table(params) -> list:
  """[(top-level module, parameter count)] in definition order."""
  import jax  # pylint: disable=g-import-not-at-top
  return [(name, sum(x.size for x in jax.tree.leaves(subtree))) for name, subtree in params.items()]
