"""Data parallelism: one Mesh over all devices of all processes, batch sharded on 'data'."""

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdiff.errors import ConfigError

DATA_AXIS = "data"


# Launchers that jax cannot auto-detect (a hand-started localhost run, a custom cluster) name the
# coordinator and this process here; Cloud TPU VMs and SLURM jobs are auto-detected by jax.
COORDINATOR_ENV = "JDIFF_COORDINATOR_ADDRESS"   # host:port of process 0
NUM_PROCESSES_ENV = "JDIFF_NUM_PROCESSES"
PROCESS_ID_ENV = "JDIFF_PROCESS_ID"


def maybe_initialize_distributed(enabled: bool) -> None:
  """jax.distributed.initialize() when the launcher asks for several processes
  (config.distributed); coordinator and process ids from JDIFF_* variables when set."""
  if enabled:
    kwargs = {}
    if os.environ.get(COORDINATOR_ENV):
      kwargs = dict(coordinator_address=os.environ[COORDINATOR_ENV],
                    num_processes=int(os.environ[NUM_PROCESSES_ENV]),
                    process_id=int(os.environ[PROCESS_ID_ENV]))
    jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch_from_local(local_batch, mesh: Mesh):
  """Assembles the per-process shards of a batch (an array, or a pytree of arrays with the same
  rows: {"image": ..., "label": ...}) into global arrays sharded on 'data'."""
  sharding = batch_sharding(mesh)

  def assemble(local: np.ndarray) -> jax.Array:
    global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
    return jax.make_array_from_process_local_data(sharding, local, global_shape)
  return jax.tree.map(assemble, local_batch)


def check_batch_divisible(batch_size: int, field: str) -> None:
  if batch_size % jax.device_count():
    raise ConfigError(f"config.{field}={batch_size}: must be a multiple of the device count "
                      f"({jax.device_count()})")
