"""Makes tests/fixtures/pretrained/ddpm_tf_tiny*: a tiny model of Ho et al.'s original TF code.

Runs the reference model code itself (hojonathanho/diffusion: diffusion_tf/models/unet.py and
diffusion_tf/nn.py, imported from --reference_repo, unmodified) under tf.compat.v1 graph mode, with
its original variable names (model/down_0/block_0/conv1/W, ...) and EMA shadow variables
(tf.train.ExponentialMovingAverage: <name>/ExponentialMovingAverage), as the released
checkpoints hold them; saves it with tf.train.Saver and records the model's outputs.

  git clone https://github.com/hojonathanho/diffusion /tmp/diffusion   # any checkout
  python jdiff/tools/make_reference_fixtures_ddpm_tf.py --reference_repo=/tmp/diffusion \
      --out=tests/fixtures/pretrained

The one adaptation to TF 2 (kept here, not in the reference files): the code calls
tensorflow.contrib.layers.group_norm (TF 1.15), which TF 2 no longer has; this script installs a
`tensorflow.contrib` module whose layers.group_norm is contrib's computation (moments over H, W
and each group's channels, rsqrt(var + 1e-6), variables `gamma` / `beta` in the layer's scope).
Its default group count is contrib's 32 unless --num_groups says otherwise: the fixture model
uses 4 groups of 8-channel levels to stay a few hundred KB (jdiff imports it with
--num_groups=4; the released checkpoints have 32).

Writes ddpm_tf_tiny/model.ckpt-1234.{index,data-00000-of-00001} (+ `checkpoint`) and
ddpm_tf_tiny_outputs.npz: x [2, 16, 16, 3], t [2] (int32), eps_ema (the model with the EMA
weights: what the paper samples), eps_raw (the trained weights).
"""

import argparse
import os
import shutil
import sys
import types

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1

TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), out_ch=3)
STEP = 1234


def install_contrib_group_norm(default_groups: int) -> None:
  """tensorflow.contrib.layers.group_norm (TF 1.15, contrib/layers/python/layers/normalization.py)
  for NHWC inputs with its defaults: groups, epsilon 1e-6, center and scale."""

  def group_norm(inputs, groups=default_groups, channels_axis=-1, reduction_axes=(-3, -2),
                 center=True, scale=True, epsilon=1e-6, scope=None, **unused):
    assert channels_axis == -1 and tuple(reduction_axes) == (-3, -2)
    with tf1.variable_scope(scope, "GroupNorm", [inputs]):
      shape = inputs.shape.as_list()
      channels = shape[-1]
      grouped = tf.reshape(inputs, [-1] + shape[1:-1] + [groups, channels // groups])
      mean, variance = tf.nn.moments(grouped, [1, 2, 4], keepdims=True)
      gain = tf.math.rsqrt(variance + epsilon)
      offset = -mean * gain
      gamma = tf1.get_variable("gamma", [channels], initializer=tf1.ones_initializer())
      beta = tf1.get_variable("beta", [channels], initializer=tf1.zeros_initializer())
      gamma = tf.reshape(gamma, [groups, channels // groups])
      beta = tf.reshape(beta, [groups, channels // groups])
      gain, offset = gain * gamma, offset * gamma + beta
      return tf.reshape(grouped * gain + offset, tf.shape(inputs))

  contrib = types.ModuleType("tensorflow.contrib")
  contrib.layers = types.SimpleNamespace(group_norm=group_norm)
  sys.modules["tensorflow.contrib"] = contrib
  tf.contrib = contrib


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference_repo", required=True,
                      help="a checkout of github.com/hojonathanho/diffusion")
  parser.add_argument("--out", default="tests/fixtures/pretrained")
  parser.add_argument("--num_groups", type=int, default=4)
  args = parser.parse_args()

  install_contrib_group_norm(args.num_groups)
  sys.path.insert(0, os.path.abspath(args.reference_repo))
  from diffusion_tf.models import unet  # pylint: disable=g-import-not-at-top

  tf1.disable_eager_execution()
  tf1.reset_default_graph()
  tf1.set_random_seed(0)
  rng = np.random.RandomState(0)
  x_value = rng.randn(2, 16, 16, 3).astype(np.float32)
  t_value = np.array([3, 517], np.int32)
  x = tf1.placeholder(tf.float32, [2, 16, 16, 3])
  t = tf1.placeholder(tf.int32, [2])
  eps = unet.model(x, t=t, y=None, name="model", num_classes=1, dropout=0.0, **TINY)
  variables = tf1.trainable_variables()
  ema = tf1.train.ExponentialMovingAverage(decay=0.9999)
  with tf1.control_dependencies([eps]):
    ema.apply(variables)
  global_step = tf1.train.get_or_create_global_step()
  saver = tf1.train.Saver()

  out = os.path.join(args.out, "ddpm_tf_tiny")
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)
  with tf1.Session() as sess:
    sess.run(tf1.global_variables_initializer())
    # Random values everywhere (the reference zero-initialises some layers), distinct for the EMA.
    raw, shadow = {}, {}
    for v in variables:
      shape = v.shape.as_list()
      fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
      scale = 1.0 / np.sqrt(fan_in) if len(shape) > 1 else 0.3
      base = 1.0 if v.op.name.endswith("gamma") else 0.0
      raw[v] = (rng.randn(*shape) * scale + base).astype(np.float32)
      shadow[v] = (raw[v] + rng.randn(*shape).astype(np.float32) * scale * 0.5).astype(np.float32)
      v.load(raw[v], sess)
      ema.average(v).load(shadow[v], sess)
    global_step.load(STEP, sess)
    saver.save(sess, os.path.join(out, "model.ckpt"), global_step=STEP, write_meta_graph=False)
    eps_raw = sess.run(eps, {x: x_value, t: t_value})
    for v in variables:
      v.load(shadow[v], sess)
    eps_ema = sess.run(eps, {x: x_value, t: t_value})
  np.savez(os.path.join(args.out, "ddpm_tf_tiny_outputs.npz"), x=x_value, t=t_value,
           eps_ema=eps_ema, eps_raw=eps_raw)
  reader = tf1.train.load_checkpoint(os.path.join(out, f"model.ckpt-{STEP}"))
  names = sorted(reader.get_variable_to_shape_map())
  print(len(names), "variables, e.g.", names[:3])
  for name in sorted(os.listdir(out)):
    print(name, os.path.getsize(os.path.join(out, name)), "bytes")


if __name__ == "__main__":
  main()
