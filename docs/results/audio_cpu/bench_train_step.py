"""configs/sc09_cpu.py's train step with cpu.filter_grad = xla vs matmul, in one process,
alternating round by round (jdiff.tools.timing.interleaved_rounds), so that load from other
processes falls on both alike. Prints the median / min / max seconds per step of each and the
per-round ratio xla / matmul.

  PYTHONPATH=$PWD nice -n 15 python docs/results/audio_cpu/bench_train_step.py [config] [rounds]
"""

import json
import sys

import jax
import numpy as np

from jdiff import config_lib
from jdiff import parallel
from jdiff.drivers import train as train_lib
from jdiff.tools import timing


def main(config_path="configs/sc09_cpu.py", rounds="5"):
  mesh = parallel.make_mesh()
  calls = {}
  for choice in ("xla", "matmul"):
    config = config_lib.load_config(config_path)
    config.cpu.filter_grad = choice
    _, state, train_step = train_lib.build_fresh_training(config, mesh)
    shape = (config.training.batch_size, config.data.audio_length, 1)
    waves = parallel.global_batch_from_local(
        np.random.default_rng(0).integers(-8000, 8000, shape).astype(np.int16), mesh)
    holder = {"state": state}

    def call(holder=holder, train_step=train_step, waves=waves):
      holder["state"], metrics = train_step(holder["state"], waves)
      return metrics
    calls[choice] = call
  times = timing.interleaved_rounds(calls, int(rounds))
  result = {"config": config_path, "rounds": int(rounds), "device": jax.devices()[0].device_kind,
            "seconds_per_step": {k: dict(timing.summarize(v), all=v) for k, v in times.items()},
            "ratio_xla_over_matmul": timing.ratio_stats(times["xla"], times["matmul"])}
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main(*sys.argv[1:])
