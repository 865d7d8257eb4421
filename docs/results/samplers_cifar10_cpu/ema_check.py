"""eps-prediction MSE and spread of the EMA and of the raw params of a configs/cifar10_cpu.py
checkpoint, on 64 training images at a few t (from the repository root):

  python docs/results/samplers_cifar10_cpu/ema_check.py WORKDIR DATA.npz true   # ema_warmup=true
  python docs/results/samplers_cifar10_cpu/ema_check.py WORKDIR DATA.npz        # plain EMA

DATA.npz: the training images the run used (uint8 `train_x` [N, 32, 32, 3]).
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import builders, config_lib

sys.path.insert(0, "tests")
from conftest import restore_train_state  # pylint: disable=g-import-not-at-top,wrong-import-position

config = config_lib.load_config("configs/cifar10_cpu.py")
workdir, config.data.path = sys.argv[1], sys.argv[2]
# As the run was trained.
config.training.ema_warmup = len(sys.argv) > 3 and sys.argv[3] == "true"
model = builders.build_model(config)
step, state = restore_train_state(config, workdir)
x0 = np.load(config.data.path)["train_x"][:64].astype(np.float32) / 127.5 - 1
alphas_cumprod = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
predict = jax.jit(lambda params, x, t: builders.make_model_fn(model, params)(x, t))
rng = np.random.default_rng(0)
for t in (50, 250, 500, 900):
  eps = rng.standard_normal(x0.shape).astype(np.float32)
  x_t = np.sqrt(alphas_cumprod[t]) * x0 + np.sqrt(1 - alphas_cumprod[t]) * eps
  for name, params in (("EMA", state.ema_params), ("raw", state.params)):
    pred = np.asarray(predict(params, jnp.asarray(x_t), jnp.full((64,), float(t))))[..., :3]
    print(f"step {step} t {t} {name}: eps-MSE {np.mean((pred - eps) ** 2):.4f} "
          f"predicted eps std {pred.std():.3f}")
