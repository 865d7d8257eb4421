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
  assert len(rows) == 1 + 2 * 9 and len({r.name for r in rows}) == len(rows)
  assert configs[0].sampling.name == "ancestral"
  at_5 = {r.label: c.sampling for r, c in zip(rows, configs) if r.x == 5}
  assert at_5["DDIM eta=1"].eta == 1.0 and at_5["DDIM eta=0"].eta == 0.0
  assert at_5["FastDPM-VAR DDPM-rev"].kappa == 1.0 and at_5["FastDPM-STEP DDIM-rev"].kappa == 0.0
  assert at_5["FastDPM-VAR DDPM-rev"].fastdpm_kind == "var"
  assert {s.steps for label, s in at_5.items()} == {5}
  with pytest.raises(errors.ConfigError, match="--steps=50: must be <= diffusion.num_timesteps"):
    _row_configs("samplers", config, {"steps": (50,)})
  rows, configs = _row_configs("samplers", config, {"steps": (5,), "ddpm_num_samples": 4})
  assert rows[0].name == "ddpm" and configs[0].evaluation.num_samples == 4
  assert {c.evaluation.num_samples for c in configs[1:]} == {config.evaluation.num_samples}
  rows, _ = _row_configs("samplers", config, {"steps": (5,), "ddpm_num_samples": 0})
  assert len(rows) == 9 and "ddpm" not in [r.name for r in rows]


def test_depth_table_trains_one_model_per_skip_type_and_a_baseline():
  rows, configs = _row_configs("depth", tiny_config(), {"skip_types": ("zero", "interpolate"),
                                                        "powers": (0, 2)})
  assert [r.name for r in rows] == ["full-c0", "full-c2", "zero-c0", "zero-c2", "interpolate-c0",
                                    "interpolate-c2"]
  assert {r.model for r in rows} == {"full", "skip-zero", "skip-interpolate"}
  assert [c.depth.power for c in configs] == [0, 2, 0, 2, 0, 2]
  # The baseline is sampled with zero skipping at every c, as the paper's "DDPM" row.
  assert [c.model.skip_type for c in configs] == ["zero"] * 4 + ["interpolate"] * 2
  assert [c.depth.training for c in configs] == ["full"] * 2 + ["random"] * 4
  with pytest.raises(errors.ConfigError, match="model.skip_type"):
    _row_configs("depth", tiny_config(), {"skip_types": ("bogus",)})


def test_depth_table_bucketed_scheme_trains_at_its_c_and_samples_at_every_c():
  rows, configs = _row_configs("depth", tiny_config(), {
      "skip_types": ("zero",), "powers": (0, 3), "schemes": ("random", "bucketed"),
      "bucketed_power": 2.0})
  assert [r.name for r in rows] == ["full-c0", "full-c3", "zero-c0", "zero-c3",
                                    "zero-bucketed-c2-c0", "zero-bucketed-c2-c3"]
  assert [r.model for r in rows][-2:] == ["skip-zero-bucketed-c2"] * 2
  assert all(r.training == {"model.skip_type": "zero", "depth.training": "bucketed",
                            "depth.power": 2.0} for r in rows[-2:])
  # Trained at c = 2, sampled at each c of the row.
  assert [c.depth.training for c in configs][-2:] == ["bucketed"] * 2
  assert [c.depth.power for c in configs][-2:] == [0, 3]
  with pytest.raises(errors.ConfigError, match=r"--schemes=random,full: each must be one of"):
    _row_configs("depth", tiny_config(), {"schemes": ("random", "full")})


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


def _surrogate_config(tmp_path=None):
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(REPO, "configs", "surrogate_sweep.py") + ":tiny")
  config.surrogate.config = os.path.join(REPO, "configs", "quickstart_gan.py") + ":tiny"
  if tmp_path is not None:
    config.surrogate.workdir = str(tmp_path / "gan")
  return config


def test_objectives_table_rows_are_the_objective_setups():
  rows, configs = _row_configs("objectives", tiny_config(), {})
  assert [r.label for r in rows] == list(paper_tables.OBJECTIVE_SETUPS) == [
      "DDPM", "Hybrid (learned variances)", "Importance Sampling", "Importance Sampling +2",
      "IWDiff", "IWDiff + Importance Sampling"]
  assert len({r.model for r in rows}) == 6 and all(r.model for r in rows)  # one model each
  by_label = {r.label: c.training for r, c in zip(rows, configs)}
  assert by_label["DDPM"].loss == "simple" and by_label["DDPM"].timestep_sampler == "uniform"
  assert by_label["Hybrid (learned variances)"].loss == "hybrid"
  assert configs[1].diffusion.variance_type == "learned_range"
  assert by_label["Importance Sampling"].timestep_sampler == "loss_aware"
  assert by_label["Importance Sampling"].extra_updates == 0
  assert by_label["Importance Sampling +2"].extra_updates == 2
  assert by_label["IWDiff"].loss == "iwdiff" and by_label["IWDiff"].timestep_sampler == "uniform"
  assert by_label["IWDiff + Importance Sampling"].loss == "iwdiff"
  assert by_label["IWDiff + Importance Sampling"].timestep_sampler == "loss_aware"
  assert all(c.sampling == configs[0].sampling for c in configs)  # one sampler for all


def test_objectives_train_time_ratio_and_paper_columns(tmp_path):
  rows = [dict(label="DDPM", train_seconds_per_step=0.5, fid=9.0, num_samples=10, device="cpu",
               num_devices=1, checkpoint_step=100, x=0),
          dict(label="IWDiff", train_seconds_per_step=1.25, fid=8.0, num_samples=10,
               device="cpu", num_devices=1, checkpoint_step=100, x=4),
          dict(label="Hybrid (learned variances)", fid=8.5, num_samples=10, device="cpu",
               num_devices=1, checkpoint_step=100, x=1)]  # trained before: no timing
  paper_tables._add_train_time_ratio(rows)  # pylint: disable=protected-access
  assert rows[0]["train_time_ratio"] == 1.0 and rows[1]["train_time_ratio"] == 2.5
  assert "train_time_ratio" not in rows[2] and "paper_fid" not in rows[2]
  assert (rows[1]["paper_train_time_ratio"], rows[1]["paper_fid"]) == (2.40, 3.69)
  run = {"train_seconds": 1, "evaluate_seconds": 2, "checkpoint_steps": {}, "label": "",
         "command": ""}
  text = open(paper_tables.write_table("objectives", rows, str(tmp_path), run)).read()
  assert "| IWDiff | 2.50 | 1.2500 | 100 | 8.00 | 2.40 | 3.69 |" in text
  assert "| Hybrid (learned variances) | n/a | n/a | 100 | 8.50 | n/a | n/a |" in text


def test_surrogate_table_rows_start_at_each_t_mid():
  config = _surrogate_config()  # T = 20, t_mids scaled to (0, 5, 10, 15)
  rows, configs = _row_configs("surrogate", config, {})
  assert [r.name for r in rows] == ["ddpm", "sngan-tmid0", "sngan-tmid5", "sngan-tmid10",
                                    "sngan-tmid15"]
  assert configs[0].surrogate.kind == "none" and rows[0].x == 20
  assert [c.surrogate.t_mid for c in configs[1:]] == [0, 5, 10, 15]
  assert {c.surrogate.kind for c in configs[1:]} == {"sngan"} and {r.model for r in rows} == {""}
  assert rows[1].label == "sngan (quickstart_gan)"
  (gan_config, gan_workdir), = paper_tables.TABLES["surrogate"].prerequisites(config)
  assert gan_config.model.kind == "sngan" and gan_workdir == config.surrogate.workdir
  config.surrogate.kind = "none"
  with pytest.raises(errors.ConfigError, match="config.surrogate.kind='none'"):
    _row_configs("surrogate", config, {})


@pytest.mark.slow  # ~2 min on 2 cores: a tiny DDPM and SNGAN trained, 3 rows evaluated
def test_surrogate_table_end_to_end_on_tiny_models(tmp_path):
  config = _surrogate_config(tmp_path)
  config.training.update(num_steps=2, checkpoint_every=2)
  config.surrogate.t_mids = (0, 10)
  config.evaluation.update(metrics=("digits_fd",), num_samples=8)
  config.sampling.batch_size = 8
  workdir = str(tmp_path / "ddpm")
  path = paper_tables.run_table("surrogate", config, workdir, {"label": "tiny"})
  with open(os.path.join(workdir, "tables", "surrogate.json")) as f:
    table = json.load(f)
  assert [r["name"] for r in table["rows"]] == ["surrogate-ddpm", "surrogate-sngan-tmid0",
                                                "surrogate-sngan-tmid10"]
  ddpm, gan_only, half = table["rows"]
  assert ddpm["network_evaluations"] == 20 and ddpm["surrogate_network_evaluations"] == 0
  assert gan_only["network_evaluations"] == 0 and gan_only["surrogate_network_evaluations"] == 1
  assert half["network_evaluations"] == 10 and half["surrogate"] == "sngan"
  assert all(r["digits_fd"] > 0 and r["num_samples"] == 8 for r in table["rows"])
  assert os.path.exists(os.path.join(tmp_path, "gan", "checkpoints"))
  assert os.path.getsize(os.path.join(workdir, "tables", "surrogate.png")) > 1000
  assert "| sngan (quickstart_gan) | 10 |" in open(path).read()


@pytest.mark.slow  # ~2 min on 2 cores: two tiny models trained and evaluated
def test_objectives_table_end_to_end_on_tiny_models(tmp_path, monkeypatch):
  monkeypatch.setattr(paper_tables, "OBJECTIVE_SETUPS", {
      name: paper_tables.OBJECTIVE_SETUPS[name] for name in ("DDPM", "IWDiff")})
  config = tiny_config()
  config.training.update(num_steps=2, checkpoint_every=2)
  config.evaluation.update(metrics=("digits_fd",), num_samples=8)
  workdir = str(tmp_path / "run")
  paper_tables.run_table("objectives", config, workdir, {"label": "tiny"})
  with open(os.path.join(workdir, "tables", "objectives.json")) as f:
    rows = json.load(f)["rows"]
  assert [r["model"] for r in rows] == ["objective-ddpm", "objective-iwdiff"]
  assert rows[0]["train_time_ratio"] == 1.0 and rows[1]["train_time_ratio"] > 0
  assert all(r["checkpoint_step"] == 2 and r["digits_fd"] > 0 for r in rows)
  with open(os.path.join(workdir, "objective-iwdiff", paper_tables.TRAIN_TIMING)) as f:
    assert json.load(f)["timed_steps"] == 2
  # Run again: nothing is trained, the timing of the first run is kept.
  paper_tables.run_table("objectives", config, workdir, {"label": "tiny"})
  with open(os.path.join(workdir, "tables", "objectives.json")) as f:
    assert json.load(f)["rows"][1]["train_seconds_per_step"] == rows[1]["train_seconds_per_step"]


def test_train_timing_is_the_stepping_time_of_the_steps_trained(tmp_path, monkeypatch):
  """Compilation excluded: seconds per step = TrainResult.stepping_seconds / steps_trained,
  accumulated over resumed calls; a call that trains nothing keeps the figure."""
  from jdiff.drivers import train as train_lib  # pylint: disable=g-import-not-at-top
  calls = iter([train_lib.TrainResult(None, 10, stepping_seconds=5.0, steps_trained=10),
                train_lib.TrainResult(None, 40, stepping_seconds=4.0, steps_trained=30),
                train_lib.TrainResult(None, 40)])
  monkeypatch.setattr(train_lib, "train", lambda config, workdir: next(calls))
  workdir = str(tmp_path / "model")
  os.makedirs(workdir)  # as the training would
  assert paper_tables._train(tiny_config(), workdir) == (10, {"train_seconds_per_step": 0.5})  # pylint: disable=protected-access
  assert paper_tables._train(tiny_config(), workdir) == (40, {"train_seconds_per_step": 9 / 40})  # pylint: disable=protected-access
  assert paper_tables._train(tiny_config(), workdir) == (40, {"train_seconds_per_step": 9 / 40})  # pylint: disable=protected-access
