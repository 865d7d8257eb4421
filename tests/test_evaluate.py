"""--mode=evaluate, --mode=reference_stats and the trade-off plot command, on tiny trained models."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cli, tiny_config
from jdiff import data as data_lib
from jdiff import errors
from jdiff.drivers import evaluate
from jdiff.drivers import train as train_lib
from jdiff.evaluation import digits_fd, inception, metrics, torch_weights
from jdiff.tools import plots


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
  # Feature caches and the digits classifier go to the test's own folder.
  monkeypatch.setenv("JDIFF_CACHE_DIR", str(tmp_path / "cache"))


def _trained(config, workdir, steps=2):
  config.training.num_steps = steps
  config.training.checkpoint_every = steps
  train_lib.train(config, str(workdir))
  return config


def _stored_samples(out_dir):
  paths = sorted(glob.glob(os.path.join(out_dir, "samples", "batch_*.npz")))
  images = []
  for path in paths:
    with np.load(path) as f:
      images.append(f["images"])
  return np.concatenate(images)


def test_evaluate_digits_writes_metrics_grid_and_scalars_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  config = _trained(tiny_config(), workdir)
  config.evaluation.metrics = ("digits_fd", "bpd")
  config.evaluation.num_samples = 10  # 3 batches of 4, the last one cut to 2
  config.evaluation.bpd_examples = 8
  results = evaluate.evaluate(config, workdir)

  out_dir = os.path.join(workdir, "eval", "ancestral20", "step_2")
  assert results["name"] == "ancestral20" and results["network_evaluations"] == 20
  assert results["num_samples"] == 10 and results["batches_generated_now"] == 3
  with open(os.path.join(out_dir, "metrics.json")) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  samples = _stored_samples(out_dir)[:10]
  assert samples.dtype == np.uint8 and samples.shape == (10, 8, 8, 1)
  # The score is the library's Digits FD of exactly the stored samples.
  expected = digits_fd.digits_frechet_distance(np.asarray(data_lib.to_float(samples)))
  assert results["digits_fd"] == pytest.approx(expected, rel=1e-9)
  assert results["bpd_examples"] == 8 and np.isfinite(results["bits_per_dim"])
  assert results["bits_per_dim"] == pytest.approx(
      results["prior_bpd"] + results["decoder_bpd"] + results["kl_terms_bpd"], rel=1e-4)
  with open(os.path.join(out_dir, "grid.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))

  # Restart after losing one batch and the scores: only that batch is made again, identically.
  kept = os.path.join(out_dir, "samples", "batch_00000.npz")
  kept_mtime = os.stat(kept).st_mtime_ns
  os.remove(os.path.join(out_dir, "samples", "batch_00001.npz"))
  os.remove(os.path.join(out_dir, "metrics.json"))
  again = evaluate.evaluate(config, workdir)
  assert again["batches_generated_now"] == 1 and again["batches_kept"] == 2
  assert os.stat(kept).st_mtime_ns == kept_mtime
  np.testing.assert_array_equal(_stored_samples(out_dir)[:10], samples)
  assert again["digits_fd"] == results["digits_fd"]

  # Samples of another sampler (batch size) are never mixed into these: the old folder is moved
  # aside whole and the evaluation samples anew.
  config.sampling.batch_size = 2
  other = evaluate.evaluate(config, workdir)
  assert other["batches_generated_now"] == 5 and other["samples_signature"]["batch_size"] == 2
  assert [name for name in os.listdir(os.path.dirname(out_dir))
          if name.startswith("step_2.replaced-")]


def test_evaluate_again_keeps_the_scores_of_kept_samples_unless_scoring_changed(
    tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  config = _trained(tiny_config(), workdir)
  config.evaluation.metrics = ("digits_fd",)
  config.evaluation.num_samples = 4
  first = evaluate.evaluate(config, workdir)
  assert first["scoring"]["metrics"] == ["digits_fd"]
  # Same samples, same scoring: the stored metrics.json, without scoring anything again.
  scored = []
  real_fd = digits_fd.digits_frechet_distance
  monkeypatch.setattr(digits_fd, "digits_frechet_distance",
                      lambda images: scored.append(1) or real_fd(images))
  kept = dict(json.loads(json.dumps(first)), batches_generated_now=0, batches_kept=1)
  assert evaluate.evaluate(config, workdir) == kept and not scored
  # Another evaluation field: scored again.
  config.evaluation.kid_subsets = config.evaluation.kid_subsets + 1
  again = evaluate.evaluate(config, workdir)
  assert scored == [1] and again["digits_fd"] == pytest.approx(first["digits_fd"], rel=1e-9)
  assert again["scoring"]["evaluation"]["kid_subsets"] == config.evaluation.kid_subsets


def test_default_names_tell_samplers_apart():
  config = tiny_config()
  names = set()
  for name, extra in (("ancestral", {}), ("ddim", dict(eta=0.0)), ("ddim", dict(eta=1.0)),
                      ("respaced", {}), ("fastdpm", dict(fastdpm_kind="var", schedule="linear"))):
    config.sampling.name = name
    config.sampling.update(extra)
    names.add(evaluate.default_name(config, 10))
  config.depth.power = 2.0
  names.add(evaluate.default_name(config, 10))
  assert len(names) == 6
  assert evaluate.curve_name(config).endswith("c=2")


@pytest.fixture(scope="module")
def random_weights_file(tmp_path_factory):
  """A file in the pytorch-fid format holding random weights (the real one cannot be downloaded
  here); every number below is therefore only a consistency check, not a real FID."""
  path = str(tmp_path_factory.mktemp("weights") / "pt_inception-random.pth")
  state_dict = torch_weights.state_dict_from_inception_variables(inception.init_inception_variables(1))
  torch_weights.save_state_dict(path, state_dict)
  return path


@pytest.mark.slow  # ~3.5 min on 2 cores (several 2048x2048 sqrtm); evaluate.ipynb runs FID / IS by default
def test_inception_metrics_and_reference_statistics_agree(tmp_path, random_weights_file):
  rng = np.random.default_rng(0)
  data_path = str(tmp_path / "rgb.npz")
  np.savez(data_path, images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
  config = tiny_config()
  config.data.update(source="npz", path=data_path, num_channels=3, random_flip=True)
  config.evaluation.update(metrics=("fid", "is", "kid"), num_samples=8, feature_batch_size=8,
                           is_splits=2, kid_subsets=5, kid_subset_size=4,
                           inception_weights=random_weights_file)
  workdir = str(tmp_path / "run")
  _trained(config, workdir)
  results = evaluate.evaluate(config, workdir)

  # Recompute IS and KID from the stored samples and the data with the library's pieces: they
  # use the same sample and reference features as FID, whose formula test_evaluation.py checks
  # against closed forms. (Each FID costs two 2048x2048 sqrtm, ~10 s each here, so only two.)
  variables = inception.load_fid_inception_variables(random_weights_file)
  samples = _stored_samples(os.path.join(workdir, "eval", results["name"], "step_2"))[:8]
  preprocessing = config.evaluation.fid_preprocessing
  pool3, logits = inception.fid_inception_features(variables, data_lib.to_float(samples), 8,
                                                   preprocessing)
  data_pool3, _ = inception.fid_inception_features(
      variables, data_lib.to_float(data_lib.load_images(config.data)), 8, preprocessing)
  assert (results["inception_score"], results["inception_score_std"]) == pytest.approx(
      metrics.inception_score(logits, 2), rel=1e-6)
  assert (results["kid"], results["kid_std"]) == pytest.approx(
      metrics.kernel_inception_distance(pool3, data_pool3, 5, 4, seed=config.seed), rel=1e-6)
  assert np.isfinite(results["fid"]) and results["fid"] > 0
  assert results["fid_preprocessing"] == "tf1"  # the default, recorded

  # The statistics file of --mode=reference_stats gives the same FID as the computed reference.
  stats_path = evaluate.reference_statistics(config, str(tmp_path / "stats"))
  mu, sigma = metrics.load_statistics(stats_path)
  assert metrics.statistics_preprocessing(stats_path) == "tf1"
  np.testing.assert_allclose(mu, data_pool3.mean(axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(data_pool3.astype(np.float64), rowvar=False), rtol=1e-4, atol=1e-6)
  config.evaluation.update(metrics=("fid",), reference_stats=stats_path, name="with_stats_file")
  from_file = evaluate.evaluate(config, workdir)
  assert from_file["fid"] == pytest.approx(results["fid"], rel=1e-6)
  assert from_file["fid_reference"] == os.path.abspath(stats_path)


def test_evaluate_cli_errors_are_one_line(tmp_path):
  workdir = str(tmp_path / "empty")
  base = ["--config=configs/quickstart.py:tiny", f"--workdir={workdir}", "--mode=evaluate"]
  result = cli(base)
  assert result.returncode == 1 and "no checkpoint" in result.stderr.strip().splitlines()[-1]
  result = cli(base + ["--config.data.num_channels=3"])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: config.evaluation.metrics=")
  result = cli(base + ["--config.evaluation.metrics=('fid','typo')"])
  assert result.returncode == 2 and "typo" in result.stderr.strip().splitlines()[-1]
  result = cli(["--config=configs/quickstart.py:tiny", "--mode=reference_stats"])
  assert result.returncode == 2 and "--workdir is required" in result.stderr


def test_reference_stats_without_weights_fails_with_one_line(tmp_path):
  result = cli(["--config=configs/quickstart.py:tiny", f"--workdir={tmp_path}", "--mode=reference_stats",
                f"--config.evaluation.inception_weights={tmp_path / 'absent.pth'}"])
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: config.evaluation.inception_weights=")


# ----------------------------------------------------------------------------------------------
# Inputs are checked before any sample is made


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A tiny trained model (checkpoint at step 2), copied by each test that evaluates it."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  _trained(tiny_config(), str(workdir))
  return workdir


def _evaluate_without_sampling(monkeypatch, tmp_path, trained_workdir, **evaluation):
  """Runs evaluate on a copy of the trained workdir with generate_samples replaced by a stub
  that records calls; returns the message of the one-line error it raised (an EvaluationError,
  or a WorkdirError for the output folder) before any sample was made."""
  workdir = tmp_path / "run"
  if not workdir.exists():
    shutil.copytree(trained_workdir, workdir)
  calls = []

  def no_sampling(*args):
    calls.append(args)
    raise AssertionError("samples were made before the inputs were checked")
  monkeypatch.setattr(evaluate, "generate_samples", no_sampling)
  config = tiny_config()
  config.evaluation.update(num_samples=4, **evaluation)
  with pytest.raises((errors.EvaluationError, errors.WorkdirError)) as raised:
    evaluate.evaluate(config, str(workdir))
  assert calls == []
  message = str(raised.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("damage", ["random_bytes", "truncated", "wrong_shapes"])
def test_evaluate_rejects_bad_inception_weights_before_sampling(
    tmp_path, monkeypatch, trained_workdir, random_weights_file, damage):
  path = str(tmp_path / "bad.pth")
  if damage == "random_bytes":
    with open(path, "wb") as f:
      f.write(np.random.default_rng(0).bytes(4096))
  elif damage == "truncated":
    with open(random_weights_file, "rb") as f:
      head = f.read(100_000)
    with open(path, "wb") as f:
      f.write(head)
  else:  # a readable torch file whose tensors are not the Inception-v3 ones
    torch_weights.save_state_dict(path, {"Conv2d_1a_3x3.conv.weight": np.zeros((2, 3, 3, 3), np.float32)})
  message = _evaluate_without_sampling(monkeypatch, tmp_path, trained_workdir,
                                       metrics=("is",), inception_weights=path)
  assert message.startswith(f"config.evaluation.inception_weights={path!r}: cannot read {path} ")
  assert "pytorch-fid Inception-v3 weights" in message


@pytest.mark.parametrize("damage", ["mu_shape", "not_finite", "not_npz"])
def test_evaluate_rejects_bad_reference_stats_before_sampling(
    tmp_path, monkeypatch, trained_workdir, random_weights_file, damage):
  path = str(tmp_path / "stats.npz")
  sigma = np.eye(2048, dtype=np.float32)
  if damage == "mu_shape":
    np.savez(path, mu=np.zeros(10), sigma=sigma)
    expected = "mu has shape (10,) and sigma (2048, 2048); expected (2048,) and (2048, 2048)"
  elif damage == "not_finite":
    sigma[3, 3] = np.nan
    np.savez(path, mu=np.zeros(2048), sigma=sigma)
    expected = "NaN or infinite"
  else:
    with open(path, "wb") as f:
      f.write(b"not an npz")
    expected = "is not an .npz archive"
  message = _evaluate_without_sampling(monkeypatch, tmp_path, trained_workdir, metrics=("fid",),
                                       reference_stats=path, inception_weights=random_weights_file)
  assert message.startswith(f"config.evaluation.reference_stats={path!r}: ")
  assert expected in message and "mu [2048] and sigma [2048, 2048]" in message


def test_evaluate_rejects_an_unwritable_output_folder_before_sampling(
    tmp_path, monkeypatch, trained_workdir):
  # <workdir>/eval is a file, so the output folder cannot be made (permissions would not stop root).
  shutil.copytree(trained_workdir, tmp_path / "run")
  (tmp_path / "run" / "eval").write_text("not a folder")
  message = _evaluate_without_sampling(monkeypatch, tmp_path, trained_workdir, metrics=("digits_fd",))
  out_dir = os.path.join(str(tmp_path / "run"), "eval", "ancestral20", "step_2")
  assert message == (f"cannot write evaluation outputs to {out_dir}: a path component is a "
                     "file, not a folder")


def test_load_statistics_checks_shapes_and_values(tmp_path):
  path = str(tmp_path / "stats.npz")
  np.savez(path, mu=np.zeros(3), sigma=np.eye(3))
  mu, sigma = metrics.load_statistics(path, dim=3)
  assert mu.shape == (3,) and sigma.shape == (3, 3) and mu.dtype == np.float64
  with pytest.raises(ValueError, match=r"expected \(4,\) and \(4, 4\)"):
    metrics.load_statistics(path, dim=4)
  np.savez(path, mu=np.zeros(3), sigma=np.eye(2))
  with pytest.raises(ValueError, match=r"expected \[D\] and \[D, D\]"):
    metrics.load_statistics(path)
  np.savez(path, mu=np.array([0.0, np.inf, 0.0]), sigma=np.eye(3))
  with pytest.raises(ValueError, match="NaN or infinite"):
    metrics.load_statistics(path)


# ----------------------------------------------------------------------------------------------
# Trade-off plots


def test_plot_tradeoff_writes_a_png(tmp_path):
  runs = [{"label": "ddim", "nfe": [10, 50, 20], "fid": [12.0, 5.0, 8.0]},
          {"label": "ancestral", "nfe": 1000, "fid": 4.0}]
  path = plots.plot_tradeoff(runs, "nfe", "fid", str(tmp_path / "plots" / "tradeoff.png"), log_x=True)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError):
    plots.plot_tradeoff([{"label": "x", "nfe": 1}], "nfe", "fid", str(tmp_path / "bad.png"))


def _write_metrics(workdir, name, curve, nfe, fid):
  path = os.path.join(workdir, "eval", name, "step_10", "metrics.json")
  os.makedirs(os.path.dirname(path))
  with open(path, "w") as f:
    json.dump({"name": name, "curve": curve, "network_evaluations": nfe, "fid": fid}, f)


def test_plots_command_groups_metrics_files_into_curves(tmp_path):
  for nfe in (10, 20, 50):
    _write_metrics(str(tmp_path / "full"), f"ddim{nfe}", "DDIM eta=0.0", nfe, 100.0 / nfe)
    _write_metrics(str(tmp_path / "adaptive"), f"ddim{nfe}_c2", "DDIM eta=0.0 c=2", nfe, 120.0 / nfe)
  paths = glob.glob(str(tmp_path / "*" / "eval" / "*" / "step_*" / "metrics.json"))
  runs = plots.runs_from_metrics_files(paths)
  assert {run["label"] for run in runs} == {"full: DDIM eta=0.0", "adaptive: DDIM eta=0.0 c=2"}

  plots_command = [sys.executable, "-m", "jdiff.tools.plots"]
  command = plots_command + ["--metrics", str(tmp_path / "*/eval/*/step_*/metrics.json")]
  out = str(tmp_path / "tradeoff.png")
  result = subprocess.run(command + ["--out", out, "--log_x"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert "6 points" in result.stdout and os.path.getsize(out) > 1000
  # Files after the flags (a glob the shell expanded) are metrics files too.
  result = subprocess.run(plots_command + ["--metrics", paths[0], f"--out={out}"] + paths[1:],
                          cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0 and "6 points" in result.stdout, result.stderr
  for bad, message in ((["--y", "inception_score"], "error: --y=inception_score: not a number"),
                       (["--nope"], "error: Unknown command line flag 'nope'")):
    result = subprocess.run(command + bad, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.strip().startswith(message), result.stderr
