"""jdiff.progress's stand-ins for clu (used where clu / TensorFlow are missing)."""

import json

from absl import logging

from jdiff import progress


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
