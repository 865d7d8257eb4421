"""36 DDIM (S = 20, eta 1) samples of a plain-EMA configs/cifar10_cpu.py checkpoint with its EMA
params and with its raw params -> grid_ddim20_eta1_{ema,raw}_params.png (from the repository root):

  python docs/results/archive/samplers_cifar10_cpu_plain_ema/raw_sample.py WORKDIR DATA.npz
"""
import sys
import jax, numpy as np
from jdiff import builders, config_lib, parallel, images
sys.path.insert(0, "tests")
from conftest import restore_train_state
config = config_lib.load_config("configs/cifar10_cpu.py")
workdir, config.data.path = sys.argv[1], sys.argv[2]
config.training.ema_warmup = False
config.sampling.name = "ddim"; config.sampling.steps = 20; config.sampling.eta = 1.0
model = builders.build_model(config)
mesh = parallel.make_mesh()
step, state = restore_train_state(config, workdir)
sampler, _ = builders.build_sampler(config, builders.build_diffusion(config), None)
fn = builders.make_sample_fn(sampler, model, mesh, builders.image_shape(config), 36)
for name, params in (("ema", state.ema_params), ("raw", state.params)):
  x = np.asarray(fn(params, jax.random.key(0)))
  u8 = np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)
  images.save_grid(u8, f"docs/results/archive/samplers_cifar10_cpu_plain_ema/grid_ddim20_eta1_{name}_params.png")
  print(name, x.std(), x.min(), x.max())
