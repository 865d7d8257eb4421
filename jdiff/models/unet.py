"""The DDPM U-Net (Ho et al. 2020) with a shortcut depth (Giladi et al., adaptive-depth U-Net).

With N = len(ch_mult) resolution levels, `shortcut_depth` k in 0..N-1 skips the k
lowest-resolution levels and the middle block; k = 0 is the full network. The first active
expansive block lacks its input from below and gets, by `skip_type`:
  zero:        zeros;
  duplicate:   the contracting-path tensor of that level again (channels tiled to fit);
  interpolate: the paper's "simple path": that tensor resized bicubically to the middle block's
               size, through the middle block, and resized back; a 1x1 conv only where the
               channel counts differ (into the middle block's, out to the block's input from
               below). The resize is PyTorch's bicubic (a = -0.75, no antialiasing), as
               layers.resize_bicubic documents.
Submodules carry explicit names so that one set of parameters serves every depth.

Mixed precision: `dtype` is the compute dtype of convs, dense layers and attention; parameters
stay float32. The output head (final GroupNorm + conv) runs in float32 and the output is
float32, so the loss and its gradients are float32 (see layers.py for the other float32 parts).
Rematerialisation: `remat` wraps every ResBlock / MBConvBlock / AttnBlock in flax's lifted
jax.checkpoint, so their activations are recomputed in the backward pass instead of stored;
outputs and gradients are unchanged (dropout masks too: the lifted rngs are replayed).
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
from jax import lax
import jax.numpy as jnp

from jdiff import choices
from jdiff.models import layers

SKIP_TYPES = choices.SKIP_TYPES
BLOCK_TYPES = choices.BLOCK_TYPES

# Rematerialised blocks. `train` (argument 3, counting self) is a Python bool: static.
_REMAT_BLOCKS = {
    layers.ResBlock: nn.remat(layers.ResBlock, static_argnums=(3,)),
    layers.MBConvBlock: nn.remat(layers.MBConvBlock, static_argnums=(3,)),
    layers.AttnBlock: nn.remat(layers.AttnBlock),
}


class UNet(nn.Module):
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  out_ch: int = 3
  num_groups: int = 32
  skip_type: str = "zero"
  block_type: str = "res"   # res: Ho et al.'s residual block; mbconv: MBConv + SE (Table 4.3)
  remat: bool = False
  dtype: Any = jnp.float32
  convolution: Callable = lax.conv_general_dilated  # the backend's (jdiff/compute.py)
  # Class-conditional (num_classes > 0): a learned embedding of the label, added to the timestep
  # embedding (improved-diffusion's class_cond). Row num_classes is the null label that
  # classifier-free guidance's unconditional half sees (Ho & Salimans 2021).
  num_classes: int = 0

  @property
  def num_levels(self) -> int:
    return len(self.ch_mult)

  def _res_block(self, out_ch, name):
    if self.block_type not in BLOCK_TYPES:
      raise ValueError(f"block_type {self.block_type!r}: allowed {BLOCK_TYPES}")
    if self.block_type == "res":
      block_cls = _REMAT_BLOCKS[layers.ResBlock] if self.remat else layers.ResBlock
      return block_cls(out_ch, dropout=self.dropout, num_groups=self.num_groups, dtype=self.dtype,
                       convolution=self.convolution, name=name)
    block_cls = _REMAT_BLOCKS[layers.MBConvBlock] if self.remat else layers.MBConvBlock
    return block_cls(out_ch, dropout=self.dropout, num_groups=self.num_groups, dtype=self.dtype,
                     name=name)

  def _attn(self, name):
    attn_cls = _REMAT_BLOCKS[layers.AttnBlock] if self.remat else layers.AttnBlock
    return attn_cls(num_groups=self.num_groups, dtype=self.dtype, name=name)

  def _middle(self, h, temb, train):
    h = self._res_block(h.shape[-1], "mid_res_0")(h, temb, train)
    h = self._attn("mid_attn")(h)
    return self._res_block(h.shape[-1], "mid_res_1")(h, temb, train)

  def _missing_input(self, h_end, level, temb, train):
    """The input from below for the first active expansive block at `level`."""
    below_ch = self.ch * self.ch_mult[level + 1]
    batch, height, width, channels = h_end.shape
    if self.skip_type == "zero":
      return jnp.zeros((batch, height, width, below_ch), h_end.dtype)
    if self.skip_type == "duplicate":
      reps = -(-below_ch // channels)
      return jnp.tile(h_end, (1, 1, 1, reps))[..., :below_ch]
    if self.skip_type == "interpolate":
      mid_ch = self.ch * self.ch_mult[-1]
      scale = 2 ** (self.num_levels - 1 - level)  # this level's size over the middle block's
      h = h_end
      if channels != mid_ch:
        h = layers.Dense(mid_ch, dtype=self.dtype, name=f"interp_in_{level}")(h)
      h = self._middle(layers.resize_bicubic(h, height // scale, width // scale), temb, train)
      h = layers.resize_bicubic(h, height, width)
      if mid_ch != below_ch:
        h = layers.Dense(below_ch, dtype=self.dtype, name=f"interp_out_{level}")(h)
      return h
    raise ValueError(f"skip_type {self.skip_type!r}: allowed {SKIP_TYPES}")

  @nn.compact
  def __call__(self, x, t, *, shortcut_depth: int = 0, train: bool = False, label=None):
    """x: [B, H, W, C] in [-1, 1]; t: [B] real-valued steps; shortcut_depth: a Python int;
    label: [B] int class labels in 0..num_classes (num_classes: none), for num_classes > 0."""
    if not 0 <= shortcut_depth < self.num_levels:
      raise ValueError(f"shortcut_depth={shortcut_depth}: allowed 0..{self.num_levels - 1}")
    last_level = self.num_levels - 1 - shortcut_depth  # the lowest-resolution active level
    x = x.astype(self.dtype)

    temb = layers.timestep_embedding(t, self.ch)
    temb = layers.Dense(self.ch * 4, dtype=self.dtype, name="temb_0")(temb)
    temb = layers.Dense(self.ch * 4, dtype=self.dtype, name="temb_1")(nn.swish(temb))
    if self.num_classes:
      if label is None:
        raise ValueError(f"a class-conditional U-Net (num_classes={self.num_classes}) needs "
                         "label= (num_classes itself for none)")
      temb = temb + nn.Embed(self.num_classes + 1, self.ch * 4, dtype=self.dtype,
                             name="label_embedding")(label)
    elif label is not None:
      raise ValueError("label= given to an unconditional U-Net (num_classes=0)")

    # Contracting path.
    hs = [layers.Conv3x3(self.ch, dtype=self.dtype, convolution=self.convolution,
                         name="conv_in")(x)]
    for level in range(last_level + 1):
      for block in range(self.num_res_blocks):
        h = self._res_block(self.ch * self.ch_mult[level], f"down_{level}_res_{block}")(
            hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = self._attn(f"down_{level}_attn_{block}")(h)
        hs.append(h)
      if level != self.num_levels - 1 and level < last_level:
        hs.append(layers.Downsample(dtype=self.dtype, convolution=self.convolution,
                                     name=f"down_{level}_downsample")(hs[-1]))

    if shortcut_depth == 0:
      h = self._middle(hs[-1], temb, train)
    else:
      h = self._missing_input(hs[-1], last_level, temb, train)

    # Expansive path.
    for level in reversed(range(last_level + 1)):
      for block in range(self.num_res_blocks + 1):
        h = self._res_block(self.ch * self.ch_mult[level], f"up_{level}_res_{block}")(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = self._attn(f"up_{level}_attn_{block}")(h)
      if level != 0:
        h = layers.Upsample(dtype=self.dtype, convolution=self.convolution,
                            name=f"up_{level}_upsample")(h)
    assert not hs

    # Output head in float32: one cheap conv to out_ch channels; keeps the eps (and variance)
    # prediction, which samplers divide by small sqrt(alpha_bar), free of bfloat16 rounding.
    h = h.astype(jnp.float32)
    h = nn.swish(layers.group_norm(self.num_groups, jnp.float32, name="norm_out")(h))
    return layers.Conv3x3(self.out_ch, init_scale=0.0, dtype=jnp.float32,
                          convolution=self.convolution, name="conv_out")(h)

  def init_all_depths(self, x, t, **cond):
    """Runs every depth once, so that `init` creates the parameters of all of them."""
    if self.num_classes and "label" not in cond:
      cond = dict(cond, label=jnp.full(t.shape, self.num_classes, jnp.int32))
    return [self(x, t, shortcut_depth=k, **cond) for k in range(self.num_levels)]
