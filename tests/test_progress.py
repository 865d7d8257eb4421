"""jdiff.progress's stand-ins for clu (used where clu / TensorFlow are missing)."""

import json

import jax
import numpy as np
import pytest
from absl import logging

from conftest import tiny_config
from jdiff import builders, parallel, progress


def test_rate_and_eta_count_steps_between_reports(monkeypatch):
  clock = iter([100.0, 110.0, 112.0, 130.0])
  monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
  lines, scalars = [], []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))

  class Writer:
    def write_scalars(self, step, values):
      scalars.append((step, values))
  report = progress._RateAndEta(1000, Writer(), every_secs=10)  # pylint: disable=protected-access
  report(100)  # the first report only starts the clock
  report(300)  # 200 steps in 10 s
  report(310)  # 2 s later: under every_secs, silent
  report(500)  # 200 steps in 20 s since the last line
  assert scalars == [(300, {"steps_per_sec": 20.0}), (500, {"steps_per_sec": 10.0})]
  assert "20.0 steps/s" in lines[0] and "(300/1000)" in lines[0]
  assert "ETA: 0.8 min" in lines[1]  # 500 steps left at 10 steps/s: 50 s


def test_log_and_json_writer_appends_one_line_per_write(tmp_path):
  writer = progress._LogAndJsonWriter(str(tmp_path), just_logging=False)  # pylint: disable=protected-access
  writer.write_scalars(2, {"loss": 0.5})
  writer.write_scalars(4, {"loss": 0.25, "grad_norm": 1.0})
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert records == [{"step": 2, "loss": 0.5}, {"step": 4, "loss": 0.25, "grad_norm": 1.0}]
  progress._LogAndJsonWriter(str(tmp_path / "none"), just_logging=True).write_scalars(1, {"a": 1})  # pylint: disable=protected-access
  assert not (tmp_path / "none").exists()


def test_within_batch_reports_evaluations_rate_and_eta_and_restarts_per_batch(monkeypatch):
  clock = iter([0.0, 1.0, 4.0, 10.0, 20.0, 21.0, 21.5, 40.0])
  monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
  lines = []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
  tick = progress.within_batch("sampling: one batch", 5, every_secs=5)
  for _ in range(5):  # ticks start evaluations 1..5 at t = 0, 1, 4 (silent), 10 (a line), 20
    tick()
  # At t = 10: evaluations 1-3 done in 10 s; 2 to go (the 4th, running, and the 5th).
  assert lines == ["sampling: one batch: evaluation 4/5 (60%), 0.30/s, ETA of the batch: 0.1 min"]
  for _ in range(3):  # the next batch starts its own clock at t = 21: 2 done at t = 40
    tick()
  assert lines[1:] == ["sampling: one batch: evaluation 3/5 (40%), 0.11/s, ETA of the batch: 0.5 min"]


@pytest.mark.parametrize("name", ["ancestral", "ddim"])
def test_progress_inside_a_batch_leaves_the_samples_bitwise_equal(name):
  config = tiny_config()  # T = 20; ddim: 10 steps
  config.sampling.name = name
  model = builders.build_model(config)
  params = builders.new_params(model, config, 0)
  sampler, evaluations = builders.build_sampler(config, builders.build_diffusion(config))
  ticks = []
  sample_fns = [builders.make_sample_fn(sampler, model, parallel.make_mesh(),
                                        builders.image_shape(config), 4, tick)
                for tick in (None, lambda: ticks.append(1))]
  for i in range(2):
    rng = jax.random.fold_in(jax.random.key(1), i)
    plain, reported = (np.asarray(fn(params, rng)) for fn in sample_fns)
    assert np.array_equal(plain, reported) and np.isfinite(plain).all()
  assert len(ticks) == 2 * evaluations == 2 * {"ancestral": 20, "ddim": 10}[name]
