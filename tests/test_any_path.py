"""Any path: jdiff's own reads and writes (results, statistics, caches, sample sets, evaluation
batches) work on an object store, not only on local folders.

gs:// is simulated with etils.epath's mock backend, which routes every gs:// call of epath to
a folder of the test (a real bucket needs credentials and network). A stray local file call on
a gs:// path would create a `gs:` folder in the working directory: each test checks there is
none. Checkpoints on gs:// go through orbax and tensorstore (their own GCS support) and are not
simulated here.
"""

import json
import os

import numpy as np
import pytest
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing

from conftest import tiny_config
from jdiff import files
from jdiff.drivers import evaluate
from jdiff.drivers import sample as sample_lib
from jdiff.drivers import train as train_lib
from jdiff.evaluation import metrics

BUCKET = "gs://jdiff-test-bucket"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """Every epath call on gs://jdiff-test-bucket/... goes to tmp_path/bucket/...; yields that
  folder. The working directory is a fresh folder, to catch local calls on gs:// paths."""
  root = tmp_path / "bucket"
  root.mkdir()
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  # With TensorFlow installed epath sends gs:// to tf.io.gfile, past the mock's backends.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)

  def local(path):  # the mock serves every epath path; local ones pass through
    path = os.fspath(path)
    return str(root) + path[len(BUCKET):] if path.startswith(BUCKET) else path

  def remote(path):
    path = os.fspath(path)
    return BUCKET + path[len(str(root)):] if path.startswith(str(root)) else path

  def one(function, path, *args, **kwargs):
    return function(local(path), *args, **kwargs)

  def two(function, path, destination, *args, **kwargs):
    return function(local(path), local(destination), *args, **kwargs)

  def walk(function, top, **kwargs):
    for folder, names, file_names in function(local(top), **kwargs):
      yield remote(folder), names, file_names

  with epath_testing.mock_epath(
      open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
      rmtree=one, stat=one, glob=one, walk=walk, rename=two, replace=two, copy=two):
    yield root
  assert not os.listdir(cwd), f"local file calls on gs:// paths: {os.listdir(cwd)}"


def test_files_write_read_and_replace_on_an_object_store(bucket):
  run = f"{BUCKET}/run"
  files.check_writable(f"{run}/samples", "samples")
  files.write_json(f"{run}/metrics.json", {"fid": 1.5})
  assert json.loads(files.read_text(f"{run}/metrics.json")) == {"fid": 1.5}
  assert json.loads((bucket / "run" / "metrics.json").read_text()) == {"fid": 1.5}
  files.save_npz(f"{run}/a.npz", images=np.arange(6))
  assert np.array_equal(files.load_npz(f"{run}/a.npz")["images"], np.arange(6))
  assert np.array_equal(files.load_npz_cache(f"{run}/a.npz")["images"], np.arange(6))
  assert files.load_npz_cache(f"{run}/absent.npz") is None

  # A set of files replaced whole: the new set's files, none of the old one's left.
  for count in (4, 2):
    with files.replace_folder(f"{run}/samples") as staging:
      for i in range(count):
        files.write_bytes(os.path.join(staging, f"sample_{i}.wav"), f"{count}".encode())
  assert files.listdir(f"{run}/samples") == ["sample_0.wav", "sample_1.wav"]
  assert (bucket / "run" / "samples" / "sample_1.wav").read_bytes() == b"2"
  # A failure inside leaves the set as it was.
  with pytest.raises(RuntimeError):
    with files.replace_folder(f"{run}/samples") as staging:
      files.write_bytes(os.path.join(staging, "sample_0.wav"), b"new")
      raise RuntimeError("killed")
  assert (bucket / "run" / "samples" / "sample_0.wav").read_bytes() == b"2"
  files.move(f"{run}/samples", f"{run}/samples.replaced-1")
  assert files.listdir(f"{run}/samples.replaced-1") == ["sample_0.wav", "sample_1.wav"]
  assert not files.exists(f"{run}/samples")


def test_statistics_and_feature_caches_on_an_object_store(bucket):
  path = f"{BUCKET}/stats/cifar10.npz"
  mu, sigma = np.arange(3.0), np.eye(3)
  metrics.save_statistics(path, mu, sigma, fid_preprocessing="tf1")
  loaded = metrics.load_statistics(path, dim=3)
  assert np.array_equal(loaded[0], mu) and np.array_equal(loaded[1], sigma)
  assert metrics.statistics_preprocessing(path) == "tf1"
  calls = []
  compute = lambda: calls.append(1) or {"pool3": np.ones((2, 2))}
  for _ in range(2):
    metrics.cached_features("key", compute, f"{BUCKET}/cache")
  assert len(calls) == 1 and (bucket / "cache" / "features" / "key.npz").exists()


def test_data_keys_follow_data_on_an_object_store(bucket):
  config = tiny_config()
  np.savez(bucket / "data.npz", images=np.zeros((4, 8, 8, 1), np.uint8))
  config.data.update(source="npz", path=f"{BUCKET}/data.npz")
  key = evaluate._data_key(config, "train")  # pylint: disable=protected-access
  np.savez(bucket / "data.npz", images=np.zeros((5, 8, 8, 1), np.uint8))  # another size
  assert evaluate._data_key(config, "train") != key  # pylint: disable=protected-access
  assert f"{BUCKET}/data.npz" in json.dumps(evaluate.scoring_signature(config, ("fid",)))


def test_evaluation_batches_and_sample_sets_on_an_object_store(bucket, tmp_path):
  """The checkpoint is local (orbax's GCS is not simulated); every output goes to gs://."""
  config = tiny_config()
  config.training.update(num_steps=2, checkpoint_every=2)
  train_lib.train(config, str(tmp_path / "run"))
  config.evaluation.num_samples = 8
  generator = sample_lib.build_generator(config, str(tmp_path / "run"),
                                         sample_lib.parallel.make_mesh(), 8)
  out_dir = f"{BUCKET}/run/eval/ancestral20/step_2"
  samples, timing = evaluate.generate_samples(config, generator, out_dir)
  assert timing["batches_generated_now"] == 2 and samples.shape == (8, 8, 8, 1)
  assert sorted(os.listdir(bucket / "run" / "eval" / "ancestral20" / "step_2" / "samples")) == [
      "batch_00000.npz", "batch_00001.npz"]
  again, timing = evaluate.generate_samples(config, generator, out_dir)
  assert timing["batches_generated_now"] == 0 and np.array_equal(again, samples)
  # Another sampler: the old folder moves aside (a copy and a delete on the store).
  config.diffusion.variance_type = "fixedsmall"
  evaluate.generate_samples(config, generator, out_dir)
  moved = [name for name in os.listdir(bucket / "run" / "eval" / "ancestral20")
           if name.startswith("step_2.replaced-")]
  assert len(moved) == 1

  with files.replace_folder(f"{BUCKET}/run/samples") as staging:
    sample_lib.write_samples(config, samples, 2, staging, "grid.png")
  stored = files.load_npz(f"{BUCKET}/run/samples/samples.npz")
  assert np.array_equal(stored["images"], samples) and int(stored["step"]) == 2
  assert epath.Path(f"{BUCKET}/run/samples/grid.png").exists()
