"""Checks that need 4 devices, run by the tests as `python tests/on_four_devices.py NAME`.

chex.set_n_cpu_devices must run before JAX first touches its backend, so these run in a fresh
process (the rest of the suite keeps one CPU device, as a user's laptop has).
"""

import os
import sys

import chex

chex.set_n_cpu_devices(4)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top,wrong-import-position

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]  # conftest, and this checkout's jdiff
from conftest import SHARED_DATA, SHARED_WEIGHTS, tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from jdiff import builders, parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from jdiff.drivers import train as train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from jdiff.evaluation import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position


def train_step_equals_one_device():
  """Two train steps on a 4-device mesh give the 1-device loss and params (within rounding)."""
  assert jax.device_count() == 4, jax.devices()
  config = tiny_config()
  model, diffusion = builders.build_model(config), builders.build_diffusion(config)
  optimizer = builders.build_optimizer(config.training)
  images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = Mesh(np.asarray(devices), (parallel.DATA_AXIS,))
    state = builders.build_state(config, model, optimizer, mesh)
    step = train_lib.make_train_step(config, model, diffusion, optimizer, mesh)
    batch = jax.device_put(images, parallel.batch_sharding(mesh))
    for _ in range(2):
      state, step_metrics = step(state, batch)
    results.append((jax.device_get(state.params), float(step_metrics["loss"])))
  (params_1, loss_1), (params_4, loss_4) = results
  assert abs(loss_1 - loss_4) <= 1e-5 * abs(loss_1), (loss_1, loss_4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params_1, params_4)


def extract_features_shards():
  """Features computed on a 4-device mesh, with a batch that does not divide, are exact."""
  assert metrics.data_mesh().size == 4, jax.devices()
  x = np.arange(30, dtype=np.float32).reshape(10, 3)
  out = metrics.extract_features(lambda v, x: x.sum(axis=1) * v, np.float32(3), x, batch_size=3)
  np.testing.assert_array_equal(out, x.sum(axis=1) * 3)


def real_inception_features_on_four_devices():
  """Real FID Inception features ($JDIFF_TEST_WEIGHTS) of 6 CIFAR-10 images ($JDIFF_TEST_DATA),
  sharded over 4 devices with a batch that leaves padding, equal the 1-device features (within
  rounding)."""
  from jdiff.evaluation import inception  # pylint: disable=g-import-not-at-top
  variables = inception.load_fid_inception_variables(
      os.path.join(SHARED_WEIGHTS, "fid_inception_2015-12-05_pool3.pth"))
  with np.load(os.path.join(SHARED_DATA, "cifar10_exact_subset.npz")) as f:
    images = f["test_x"][:6].astype(np.float32) / 127.5 - 1
  sharded, _ = inception.fid_inception_features(variables, images, 8, "tf1")
  all_devices = metrics.data_mesh
  metrics.data_mesh = lambda: Mesh(np.array(jax.devices()[:1]), ("data",))
  try:
    single, _ = inception.fid_inception_features(variables, images, 8, "tf1")
  finally:
    metrics.data_mesh = all_devices
  assert np.all(np.isfinite(sharded)) and sharded.shape == (6, 2048)
  np.testing.assert_allclose(sharded, single, rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
  globals()[sys.argv[1]]()
  print("PASSED", sys.argv[1])
