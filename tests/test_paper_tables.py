"""python -m jdiff.tools.paper_tables: the rows of each table, the files it writes, and a whole
(tiny) sampler table through --mode=evaluate's machinery."""

import json
import os

import pytest

from conftest import cli, tiny_config
from jdiff import config_lib, errors
from jdiff.tools import paper_tables


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("JDIFF_CACHE_DIR", str(tmp_path / "cache"))


def _row_configs(table, config, settings):
  settings = {**paper_tables.DEFAULT_SETTINGS, **settings}
  rows = paper_tables.TABLES[table].rows(config, settings)
  return rows, [paper_tables._with_fields(config, {**r.training, **r.fields}) for r in rows]  # pylint: disable=protected-access


def test_sampler_table_has_every_family_at_every_step_count():
  config = tiny_config()  # T = 20
  rows, configs = _row_configs("samplers", config, {"steps": (5, 10)})
  assert len(rows) == 1 + 2 * 7 and len({r.name for r in rows}) == len(rows)
  assert configs[0].sampling.name == "ancestral"
  at_5 = {r.label: c.sampling for r, c in zip(rows, configs) if r.x == 5}
  assert at_5["DDIM eta=1"].eta == 1.0 and at_5["DDIM eta=0"].eta == 0.0
  assert at_5["FastDPM-VAR DDPM-rev"].kappa == 1.0 and at_5["FastDPM-STEP DDIM-rev"].kappa == 0.0
  assert at_5["FastDPM-VAR DDPM-rev"].fastdpm_kind == "var"
  assert {s.steps for label, s in at_5.items()} == {5}
  with pytest.raises(errors.ConfigError, match="--steps=50: must be <= diffusion.num_timesteps"):
    _row_configs("samplers", config, {"steps": (50,)})


def test_depth_table_trains_one_model_per_skip_type_and_a_baseline():
  rows, configs = _row_configs("depth", tiny_config(), {"skip_types": ("zero", "interpolate"),
                                                        "powers": (0, 2)})
  assert [r.name for r in rows] == ["full-c0", "zero-c0", "zero-c2", "interpolate-c0", "interpolate-c2"]
  assert {r.model for r in rows} == {"full", "skip-zero", "skip-interpolate"}
  assert [c.depth.power for c in configs] == [0, 0, 2, 0, 2]
  assert [c.model.skip_type for c in configs[3:]] == ["interpolate"] * 2
  assert configs[0].depth.training == "full" and configs[1].depth.training == "random"
  with pytest.raises(errors.ConfigError, match="model.skip_type"):
    _row_configs("depth", tiny_config(), {"skip_types": ("bogus",)})


def test_write_table_markdown_json_and_plot(tmp_path):
  rows = [dict(label="full (baseline)", x=0, model="full", depth_power=0, seconds_per_sample=0.4,
               fid=30.0, kid=0.0123, kid_std=0.001, num_samples=100, device="cpu", num_devices=1,
               fid_preprocessing="tf1", network_evaluations=20, time_saved=0.0,
               inception_weights="w.pth"),
          dict(label="zero skip", x=2, model="skip-zero", depth_power=2, seconds_per_sample=0.3,
               fid=35.5, kid=0.02, kid_std=0.002, num_samples=100, device="cpu", num_devices=1,
               fid_preprocessing="tf1", network_evaluations=20, time_saved=0.25,
               inception_weights="w.pth")]
  run = {"train_seconds": 60, "evaluate_seconds": 120, "checkpoint_steps": {"full": 7},
         "label": "CPU-scale", "command": "python -m jdiff.tools.paper_tables --table=depth"}
  path = paper_tables.write_table("depth", rows, str(tmp_path), run)
  text = open(path).read()
  assert "| skip type | c | s/image | time saved | FID | KID x1e3 |" in text  # no Digits FD
  assert "| full (baseline) | 0 | 0.4000 | 0.0% | 30.00 | 12.30 ± 1.00 |" in text
  assert "| zero skip | 2 | 0.3000 | 25.0% | 35.50 | 20.00 ± 2.00 |" in text
  assert "**CPU-scale**" in text and "preprocessing 'tf1'" in text and '{"full": 7}' in text
  assert os.path.getsize(os.path.join(tmp_path, "tables", "depth.png")) > 1000
  with open(os.path.join(tmp_path, "tables", "depth.json")) as f:
    assert json.load(f)["rows"][1]["fid"] == 35.5


@pytest.mark.slow  # ~3 min on 2 cores: 8 samplers compiled and run on a tiny model
def test_sampler_table_end_to_end_on_a_tiny_model(tmp_path):
  workdir = str(tmp_path / "run")
  result = cli(["--config=configs/quickstart.py:tiny", f"--workdir={workdir}", "--mode=train",
                "--config.training.num_steps=2", "--config.training.checkpoint_every=2"])
  assert result.returncode == 0, result.stderr[-2000:]
  config = tiny_config()
  config.training.num_steps = 2
  config.evaluation.update(metrics=("digits_fd",), num_samples=8)
  config_lib.validate(config)
  path = paper_tables.run_table("samplers", config, workdir, {"steps": (5,), "label": "tiny"})
  with open(os.path.join(workdir, "tables", "samplers.json")) as f:
    table = json.load(f)
  assert len(table["rows"]) == 8 and table["run"]["checkpoint_steps"] == {"": 2}
  for row in table["rows"]:
    assert row["num_samples"] == 8 and row["digits_fd"] > 0 and row["checkpoint_step"] == 2
    assert os.path.exists(os.path.join(workdir, "eval", row["name"], "step_2", "metrics.json"))
  assert {row["network_evaluations"] for row in table["rows"][1:]} == {5}
  assert "FastDPM-STEP DDIM-rev" in open(path).read()
