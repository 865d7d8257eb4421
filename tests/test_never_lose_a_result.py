"""Never lose or misreport a result: sample, evaluate, reference statistics and the caches.

The data-loss cases run end to end through the command line on the tiny quickstart config and
compare files' hashes before and after; every bad input or failure is one `error:` line with
the documented exit code, and no traceback.
"""

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, assert_one_error_line, cli, snapshot, tiny_config
from jdiff import audio
from jdiff import checkpoint as checkpoint_lib
from jdiff import config_lib
from jdiff import data as data_lib
from jdiff import errors
from jdiff import files
from jdiff.drivers import evaluate
from jdiff.drivers import sample as sample_lib
from jdiff.drivers import train as train_lib
from jdiff.evaluation import inception, metrics, torch_weights

QUICKSTART = "--config=configs/quickstart.py:tiny"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("JDIFF_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny quickstart workdir trained to step 4 (checkpoints 2 and 4) and sampled once."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  result = cli([QUICKSTART, f"--workdir={workdir}", "--mode=train",
                "--config.training.num_steps=4", "--config.training.checkpoint_every=2"],
               timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  result = cli([QUICKSTART, f"--workdir={workdir}", "--mode=sample",
                "--config.sampling.num_samples=8"], timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  # The console says which checkpoint it sampled.
  assert "samples of checkpoint step 4:" in result.stdout
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(trained, copy)
  return copy


@pytest.fixture(scope="module")
def random_weights_file(tmp_path_factory):
  """The pytorch-fid file format with random weights: the pipeline, not a real FID."""
  path = str(tmp_path_factory.mktemp("weights") / "pt_inception-random.pth")
  torch_weights.save_state_dict(
      path, torch_weights.state_dict_from_inception_variables(inception.init_inception_variables(1)))
  return path


def rgb_npz(path, count=6, seed=0):
  np.savez(path, images=np.random.default_rng(seed).integers(0, 256, (count, 8, 8, 3), np.uint8))
  return str(path)


@contextlib.contextmanager
def small_disk(path, free_pages: int):
  """A tmpfs at path with only `free_pages` pages left once the caller's files are in (the
  caller fills it inside the block via the returned function); skips where mounting is denied."""
  os.makedirs(path, exist_ok=True)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)],
                           capture_output=True, check=False)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()})")

  def fill():
    stat = os.statvfs(path)
    free = stat.f_bavail * stat.f_frsize
    with open(os.path.join(path, "filler"), "wb") as f:
      f.write(b"\0" * (free - free_pages * stat.f_frsize))
  try:
    yield fill
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


# -- 1, 9. A full disk destroys nothing, and is one line in every mode --------------------------


def test_full_disk_during_sample_keeps_the_previous_samples(trained, tmp_path):
  disk = tmp_path / "disk"
  with small_disk(disk, free_pages=1) as fill:
    shutil.copytree(trained, disk / "run")
    before = snapshot(disk / "run" / "samples")
    fill()  # room for the write probe, not for the new set
    result = cli([QUICKSTART, f"--workdir={disk / 'run'}", "--mode=sample",
                  "--config.sampling.num_samples=16"], timeout=600)
    assert_one_error_line(result, 1, f"{disk / 'run' / 'samples'}", "disk full", "as it was")
    assert snapshot(disk / "run" / "samples") == before
    assert sorted(os.listdir(disk / "run")) == sorted(os.listdir(trained))  # no leftovers


@pytest.mark.parametrize("mode", ["sample", "evaluate", "reference_stats", "bench"])
def test_a_full_disk_is_one_line_before_any_work(trained, tmp_path, mode, random_weights_file):
  disk = tmp_path / "disk"
  with small_disk(disk, free_pages=0) as fill:
    shutil.copytree(trained, disk / "run")
    before = snapshot(disk / "run")
    fill()
    args = [QUICKSTART, f"--workdir={disk / 'run'}", f"--mode={mode}"]
    if mode == "evaluate":
      args += ["--config.evaluation.metrics=digits_fd", "--config.evaluation.num_samples=4"]
    elif mode == "reference_stats":  # statistics of RGB data
      args += [f"--config.evaluation.inception_weights={random_weights_file}",
               "--config.evaluation.metrics=fid", "--config.data.source=npz",
               f"--config.data.path={rgb_npz(tmp_path / 'd.npz')}", "--config.data.num_channels=3"]
    elif mode == "bench":
      args.append("--config.bench.kind=core")
    result = cli(args, timeout=600)
    assert_one_error_line(result, 1, "disk full", str(disk / "run"))
    assert "sampling: 1/" not in result.stderr  # refused before the work, not after
    os.remove(disk / "filler")
    assert snapshot(disk / "run") == before


@pytest.mark.parametrize("mode", [mode for mode in config_lib.MODES if mode != "summary"])
def test_a_workdir_that_is_a_file_is_one_line_in_every_mode(tmp_path, mode):
  path = tmp_path / "not_a_folder"
  path.write_text("x")
  result = cli([QUICKSTART, f"--workdir={path}", f"--mode={mode}"], timeout=300)
  assert_one_error_line(result, 1, f"--workdir={path} is a file, not a folder")
  assert path.read_text() == "x"


# -- 2. Atomic writes, and a fault test that kills runs at random moments ------------------------


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
  path = tmp_path / "stats.npz"
  metrics.save_statistics(str(path), np.zeros(3), np.eye(3))
  before = path.read_bytes()
  with pytest.raises(RuntimeError, match="killed"):
    with files.atomic_write(path) as f:
      f.write(b"half a file")
      raise RuntimeError("killed")
  assert path.read_bytes() == before and os.listdir(tmp_path) == ["stats.npz"]
  # A full disk (ENOSPC) is one WorkdirError line naming the file; the old file stays.
  with pytest.raises(errors.WorkdirError, match=f"cannot write {path}: disk full"):
    with files.atomic_write(path) as f:
      raise OSError(28, "No space left on device")
  assert path.read_bytes() == before and os.listdir(tmp_path) == ["stats.npz"]


def test_replace_folder_swaps_the_whole_set_or_nothing(tmp_path):
  out = tmp_path / "samples"
  out.mkdir()
  for i in range(4):
    (out / f"sample_{i}.wav").write_text(f"old {i}")
  with pytest.raises(KeyboardInterrupt):
    with files.replace_folder(out) as staging:
      (open(os.path.join(staging, "sample_0.wav"), "w")).write("new 0")
      raise KeyboardInterrupt
  assert sorted(os.listdir(out)) == [f"sample_{i}.wav" for i in range(4)]
  assert os.listdir(tmp_path) == ["samples"]
  with files.replace_folder(out) as staging:
    for i in range(2):
      files.write_bytes(os.path.join(staging, f"sample_{i}.wav"), b"new")
  assert sorted(os.listdir(out)) == ["sample_0.wav", "sample_1.wav"]
  # A kill between the two renames leaves the old set under .replaced-<pid>: put back.
  os.replace(out, tmp_path / f"samples{files.REPLACED}123")
  files.recover_folder(out)
  assert sorted(os.listdir(out)) == ["sample_0.wav", "sample_1.wav"]


def _mode_args(mode, workdir, data_path, weights):
  args = [QUICKSTART, f"--workdir={workdir}", f"--mode={mode}"]
  if mode == "sample":
    args += ["--config.sampling.num_samples=24", "--config.sampling.batch_size=4"]
  elif mode == "evaluate":
    args += ["--config.evaluation.metrics=digits_fd", "--config.evaluation.num_samples=24",
             "--config.sampling.batch_size=4"]
  else:
    args += [f"--config.evaluation.inception_weights={weights}", "--config.data.source=npz",
             "--config.evaluation.metrics=fid",
             f"--config.data.path={data_path}", "--config.data.num_channels=3",
             "--config.evaluation.feature_batch_size=4"]
  return args


def _outputs(mode, workdir):
  folder = {"sample": "samples", "evaluate": "eval", "reference_stats": "reference_stats"}[mode]
  return os.path.join(workdir, folder)


def content(path):
  """What a file holds: an .npz's arrays (not its zip timestamps, nor an evaluation batch's
  timing), a JSON's scores, the bytes of anything else. Raises if the file is not whole."""
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {key: hashlib.sha256(f[key].tobytes()).hexdigest() for key in f.files
              if key != "seconds"}
  if path.endswith("metrics.json"):
    with open(path) as f:
      return json.load(f)["digits_fd"]
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def contents(directory) -> dict:
  """{relative path: content} of every file under directory but temporary ones."""
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      if files.PARTIAL not in name:
        path = os.path.join(root, name)
        found[os.path.relpath(path, directory)] = content(path)
  return found


def _fault_rounds(mode, tmp_path, trained, weights, kills):
  """Runs `mode` once uninterrupted, then `kills` times killed (SIGKILL) at a random moment of
  its run time, each from the same start: every file left under its own name is the old complete
  one or the new complete one, and a rerun ends where the uninterrupted run did."""
  data_path = rgb_npz(tmp_path / "data.npz")
  start_dir = tmp_path / "start"
  shutil.copytree(trained, start_dir)  # holds samples/ from an earlier run
  if mode == "reference_stats":  # an existing statistics file, which the runs below rewrite
    result = cli(_mode_args(mode, start_dir, data_path, weights), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
  old = contents(_outputs(mode, start_dir))
  clean = tmp_path / "clean"
  shutil.copytree(start_dir, clean)
  started = time.perf_counter()
  result = cli(_mode_args(mode, clean, data_path, weights), timeout=600)
  duration = time.perf_counter() - started
  assert result.returncode == 0, result.stderr[-2000:]
  new = contents(_outputs(mode, clean))
  rng = random.Random(f"{mode}-{kills}")
  for round_ in range(kills):
    run = tmp_path / f"killed{round_}"
    shutil.copytree(start_dir, run)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen([sys.executable, "-m", "jdiff.main",
                                *_mode_args(mode, run, data_path, weights)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.3, 1.0) * duration)
    process.kill()
    process.wait()
    for name, held in contents(_outputs(mode, run)).items():
      assert held in (old.get(name), new.get(name)), f"{name}: neither the old nor the new file"
    # The same command again, to the end: the same files as the uninterrupted run, no leftovers.
    result = cli(_mode_args(mode, run, data_path, weights), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert contents(_outputs(mode, run)) == new
    assert not [name for root, dirs, names in os.walk(run) for name in names + dirs
                if files.PARTIAL in name or files.REPLACED in name]


@pytest.mark.parametrize("mode", ["sample", "evaluate", "reference_stats"])
def test_runs_killed_at_a_random_moment_leave_old_or_new_files(mode, tmp_path, trained,
                                                                random_weights_file):
  _fault_rounds(mode, tmp_path, trained, random_weights_file, kills=1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sample", "evaluate", "reference_stats"])
def test_runs_killed_at_many_random_moments_leave_old_or_new_files(mode, tmp_path, trained,
                                                                   random_weights_file):
  _fault_rounds(mode, tmp_path, trained, random_weights_file, kills=5)


# -- 3. evaluate never scores another model's samples -------------------------------------------


def _evaluate_tiny(workdir, **fields):
  config = tiny_config()
  config.training.update(num_steps=2, checkpoint_every=2)
  config.evaluation.update(metrics=("digits_fd",), num_samples=4)
  for field, value in fields.items():
    section, name = field.split(".")
    config[section][name] = value
  return evaluate.evaluate(config, str(workdir))


def test_evaluate_samples_again_for_a_new_model_or_another_variance(tmp_path):
  workdir = tmp_path / "run"
  config = tiny_config()
  config.training.update(num_steps=2, checkpoint_every=2)
  train_lib.train(config, str(workdir))
  first = _evaluate_tiny(workdir)
  assert first["batches_generated_now"] == 1
  assert first["samples_signature"]["checkpoint"]["step"] == 2
  assert _evaluate_tiny(workdir)["batches_generated_now"] == 0  # same model: kept

  # A new model at the same step in the same workdir (--from_scratch, another learning rate).
  config.training.learning_rate *= 10
  train_lib.train(config, str(workdir), from_scratch=True)
  second = _evaluate_tiny(workdir)
  assert second["batches_generated_now"] == 1
  assert (second["samples_signature"]["checkpoint"]["params_sha256"]
          != first["samples_signature"]["checkpoint"]["params_sha256"])
  assert second["digits_fd"] != first["digits_fd"]
  moved = [name for name in os.listdir(workdir / "eval" / "ancestral20")
           if name.startswith("step_2.replaced-")]
  assert len(moved) == 1  # the old samples and scores are kept aside, not deleted
  with open(workdir / "eval" / "ancestral20" / "step_2" / "metrics.json") as f:
    assert json.load(f)["samples_signature"] == second["samples_signature"]

  # Another variance is another sampler: sampled and scored again.
  third = _evaluate_tiny(workdir, **{"diffusion.variance_type": "fixedsmall"})
  assert third["batches_generated_now"] == 1 and third["digits_fd"] != second["digits_fd"]


# -- 4. Feature caches follow the data's content -------------------------------------------------


def test_feature_cache_keys_follow_the_data_content_and_selection(tmp_path, caplog):
  config = tiny_config()
  path = tmp_path / "data.npz"
  np.savez(path, images=np.zeros((4, 8, 8, 1), np.uint8), other=np.ones((4, 8, 8, 1), np.uint8))
  config.data.update(source="npz", path=str(path))
  key = evaluate._data_key(config, "train")  # pylint: disable=protected-access
  config.data.npz_key = "other"
  assert evaluate._data_key(config, "train") != key  # pylint: disable=protected-access
  config.data.npz_key = ""
  time.sleep(0.01)
  np.savez(path, images=np.full((4, 8, 8, 1), 7, np.uint8), other=np.ones((4, 8, 8, 1), np.uint8))
  replaced = evaluate._data_key(config, "train")  # pylint: disable=protected-access
  assert replaced != key  # same path, new content
  folder = tmp_path / "images"
  folder.mkdir()
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
  config.data.update(source="folder", path=str(folder))
  folder_key = evaluate._data_key(config, "train")  # pylint: disable=protected-access
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "b.png")
  assert evaluate._data_key(config, "train") != folder_key  # pylint: disable=protected-access

  calls = []
  compute = lambda: calls.append(1) or {"pool3": np.arange(6.0).reshape(3, 2)}
  caplog.set_level(logging.INFO)
  first = metrics.cached_features("some-key", compute, str(tmp_path / "cache"))
  second = metrics.cached_features("some-key", compute, str(tmp_path / "cache"))
  assert len(calls) == 1 and np.array_equal(first["pool3"], second["pool3"])
  assert any("using the cache" in record.getMessage() for record in caplog.records)


# -- 5. 16-bit PNGs --------------------------------------------------------------------------


def test_16_bit_pngs_are_scaled_not_clipped_and_32_bit_images_are_refused(tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  wide = (np.arange(64).reshape(8, 8) * 1040).astype(np.uint16)  # 0 .. 65520
  Image.fromarray(wide).save(folder / "a.png")
  assert Image.open(folder / "a.png").mode == "I;16"
  config = tiny_config()
  config.data.update(source="folder", path=str(folder), random_flip=False)
  images = data_lib.load_images(config.data)
  np.testing.assert_array_equal(images[0, ..., 0], np.round(wide / 257.0).astype(np.uint8))
  # 32-bit integer pixels (a PNG Pillow reads as mode I) have no known range: refused.
  image = Image.fromarray(np.full((8, 8), 70000, np.int32), "I")
  with pytest.raises(errors.DataError, match="a.png: 32-bit integer pixels .* no known range"):
    data_lib._image_as_uint8(image, 1, str(folder / "a.png"))  # pylint: disable=protected-access


# -- 6, 16. Audio: the sample set is replaced whole; local SC09; WAV formats ----------------------


def _clips(folder, rate=16000, length=1024):
  for w, word in enumerate(("zero", "one")):
    for k in range(3):
      tone = 0.5 * np.sin(2 * np.pi * (200 + 150 * w + 30 * k) * np.arange(length) / rate)
      audio.write_wav(os.path.join(folder, word, f"s{k}_nohash_0.wav"), rate, tone)
  return str(folder)


def test_audio_resampled_with_fewer_samples_leaves_only_the_new_set(tmp_path):
  config = config_lib.load_config(os.path.join(REPO, "configs", "sc09_cpu.py") + ":tiny")
  config.data.update(source="folder", path=_clips(tmp_path / "clips"))
  config.training.update(num_steps=1, checkpoint_every=1)
  config.sampling.update(name="fastdpm", fastdpm_kind="var", steps=2, schedule="quadratic")
  train_lib.train(config, str(tmp_path / "run"))
  config.sampling.update(num_samples=4, batch_size=4)
  sample_lib.sample(config, str(tmp_path / "run"))
  config.sampling.update(num_samples=2, batch_size=2)
  sample_lib.sample(config, str(tmp_path / "run"))
  out = tmp_path / "run" / "samples"
  assert sorted(os.listdir(out)) == ["sample_0000.wav", "sample_0001.wav", "samples.npz",
                                     "waveforms.png"]
  assert len(np.load(out / "samples.npz")["images"]) == 2


def test_sc09_with_a_local_path_reads_it_without_a_download(tmp_path, monkeypatch):
  monkeypatch.setattr(audio, "load_sc09", lambda **kwargs: pytest.fail("tried to download"))
  config = config_lib.load_config(os.path.join(REPO, "configs", "sc09_cpu.py") + ":tiny")
  assert config.data.source == "sc09"
  config.data.path = _clips(tmp_path / "clips")
  waves = data_lib.load_images(config.data)
  assert waves.shape == (6, config.data.audio_length, 1) and waves.dtype == np.int16


def test_24_bit_and_truncated_wavs_are_named_in_one_line(tmp_path):
  import scipy.io.wavfile  # pylint: disable=g-import-not-at-top
  path = tmp_path / "deep.wav"
  # 24-bit PCM written by hand (scipy writes int32 as 32-bit).
  samples = (np.arange(100, dtype=np.int32) * 1000).astype("<i4")
  payload = b"".join(int(s).to_bytes(4, "little", signed=True)[:3] for s in samples)
  header = (b"RIFF" + (36 + len(payload)).to_bytes(4, "little") + b"WAVEfmt " +
            (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") +
            (16000).to_bytes(4, "little") + (48000).to_bytes(4, "little") +
            (3).to_bytes(2, "little") + (24).to_bytes(2, "little") + b"data" +
            len(payload).to_bytes(4, "little"))
  path.write_bytes(header + payload)
  assert scipy.io.wavfile.read(path)[1].dtype == np.int32  # what scipy calls it
  with pytest.raises(errors.DataError, match="deep.wav: 24-bit PCM; expected 16-bit PCM"):
    audio.read_wav(str(path))
  good = tmp_path / "good.wav"
  audio.write_wav(str(good), 16000, np.zeros(1000, np.int16))
  truncated = tmp_path / "truncated.wav"
  truncated.write_bytes(good.read_bytes()[:500])
  with pytest.raises(errors.DataError, match="truncated.wav: unreadable as WAV .*truncated") as error:
    audio.read_wav(str(truncated))
  assert "\n" not in str(error.value)


# -- 7. Positional arguments ----------------------------------------------------------------


def test_a_positional_argument_is_refused(tmp_path):
  result = cli([QUICKSTART, f"--workdir={tmp_path}", "--mode=sample",
                "config.sampling.num_samples=64"], timeout=300)
  assert_one_error_line(result, 2, "'config.sampling.num_samples=64'",
                        "did you mean --config.sampling.num_samples=64?")
  assert not os.listdir(tmp_path)


# -- 8, 11, 15. Checkpoints: how many are kept; rotation during a read; permission ---------------


def _small_items(value):
  return {checkpoint_lib.STATE: {"w": np.full((3,), value, np.float32)},
          checkpoint_lib.EMA_PARAMS: {"w": np.full((3,), value, np.float32)}}


def _saved_steps(directory, steps, keep):
  checkpointer = checkpoint_lib.Checkpointer(str(directory), keep)
  for step in steps:
    checkpointer.save(step, _small_items(step), {"identity": {}})
  checkpointer.close()
  return checkpoint_lib.Checkpointer(str(directory), read_only=True)


def test_keep_checkpoints_keeps_exactly_that_many_without_deletion_warnings(tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  reader = _saved_steps(tmp_path, range(1, 9), keep=3)
  assert reader.all_steps() == [6, 7, 8]
  assert not [r for r in caplog.records if "Unable to find the step" in r.getMessage()]


def test_a_step_deleted_while_being_read_falls_back_to_the_previous_one(tmp_path, monkeypatch,
                                                                         caplog):
  reader = _saved_steps(tmp_path, (1, 2), keep=None)
  real_restore = checkpoint_lib.Checkpointer.restore

  def rotating_restore(self, step, abstract_items, legacy=None):
    if step == 2:  # the trainer deletes step 2 while it is read
      shutil.rmtree(self._step_dir(step))  # pylint: disable=protected-access
      raise FileNotFoundError(f"checkpoints/{step}/ema_params: no such file")
    return real_restore(self, step, abstract_items, legacy)
  monkeypatch.setattr(checkpoint_lib.Checkpointer, "restore", rotating_restore)
  abstract = {checkpoint_lib.EMA_PARAMS: {"w": np.zeros((3,), np.float32)}}
  step, items = reader.restore_latest(abstract, {})
  assert step == 1 and float(items[checkpoint_lib.EMA_PARAMS]["w"][0]) == 1.0
  assert not reader.damaged_steps()
  assert any("deleted while being read" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied", "ema_params/d/x"),
                                   RuntimeError("PERMISSION_DENIED: open failed"),
                                   MemoryError(), RuntimeError("UNAVAILABLE: gcs timeout")])
def test_permission_memory_and_network_errors_are_not_damage(tmp_path, monkeypatch, error):
  _saved_steps(tmp_path, (1, 2), keep=None).close()
  writer = checkpoint_lib.Checkpointer(str(tmp_path), 3)  # a trainer: it would move damage aside

  def failing_restore(self, step, abstract_items, legacy=None):
    raise error
  monkeypatch.setattr(checkpoint_lib.Checkpointer, "restore", failing_restore)
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  abstract = {checkpoint_lib.EMA_PARAMS: {"w": np.zeros((3,), np.float32)}}
  with pytest.raises(errors.WorkdirError, match="cannot read checkpoint step 2 .*nothing was moved"
                     ) as raised:
    writer.restore_latest(abstract, {})
  assert "\n" not in str(raised.value) and "object at 0x" not in str(raised.value)
  if isinstance(error, PermissionError) or "PERMISSION" in str(error):
    assert "permission denied" in str(raised.value)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before  # nothing moved
  writer.close()


# -- 10. Damaged caches and evaluation leftovers --------------------------------------------------


def test_damaged_caches_and_leftovers_are_reported_and_made_again(tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  cache = tmp_path / "cache"
  compute = lambda: {"pool3": np.arange(6.0).reshape(3, 2)}
  metrics.cached_features("k", compute, str(cache))
  cache_file = cache / "features" / "k.npz"
  cache_file.write_bytes(cache_file.read_bytes()[:40])  # truncated
  np.testing.assert_array_equal(metrics.cached_features("k", compute, str(cache))["pool3"],
                                compute()["pool3"])
  assert any("k.npz is damaged" in r.getMessage() for r in caplog.records)

  workdir = tmp_path / "run"
  config = tiny_config()
  config.training.update(num_steps=2, checkpoint_every=2)
  train_lib.train(config, str(workdir))
  config.evaluation.update(metrics=("digits_fd",), num_samples=8)
  first = evaluate.evaluate(config, str(workdir))
  out_dir = workdir / "eval" / "ancestral20" / "step_2"
  batch = out_dir / "samples" / "batch_00001.npz"
  batch.write_bytes(batch.read_bytes()[:100])
  again = evaluate.evaluate(config, str(workdir))
  assert again["batches_generated_now"] == 1 and again["digits_fd"] == first["digits_fd"]
  assert any("batch_00001.npz is damaged" in r.getMessage() for r in caplog.records)
  (out_dir / "sampler.json").write_text("{ not json")
  third = evaluate.evaluate(config, str(workdir))
  assert third["batches_generated_now"] == 2 and third["digits_fd"] == first["digits_fd"]
  assert any("sampler.json is damaged" in r.getMessage() for r in caplog.records)


# -- 12, 13. Validation, memory, batch sizes; reference statistics of one image -------------------


def test_one_timestep_or_one_evaluation_sample_is_refused_by_validation():
  config = tiny_config()
  config.diffusion.num_timesteps = 1
  with pytest.raises(errors.ConfigError, match="diffusion.num_timesteps=1: must be an integer >= 2"):
    config_lib.validate(config)
  config = tiny_config()
  config.evaluation.num_samples = 1  # was a traceback after sampling (a covariance of one)
  with pytest.raises(errors.ConfigError, match="evaluation.num_samples=1: must be an integer >= 2"):
    config_lib.validate(config)


def test_out_of_memory_names_the_batch_size_to_lower():
  config = tiny_config()
  config.training.batch_size = 100000
  error = RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 26625749664 bytes.")
  assert errors.is_out_of_memory(error) and not errors.is_out_of_memory(RuntimeError("other"))
  message = str(errors.out_of_memory(error, config, "train"))
  assert message.startswith("out of memory with --config.training.batch_size=100000 "
                            "(RESOURCE_EXHAUSTED: Out of memory allocating")
  assert "--config.training.batch_size=25000" in message and "remat" in message
  config.sampling.batch_size = 64
  assert "--config.sampling.batch_size=64" in str(errors.out_of_memory(error, config, "sample"))


@pytest.mark.slow  # ~45 s: XLA tries the allocation first
def test_an_impossible_training_batch_is_one_line(tmp_path):
  result = cli([QUICKSTART, f"--workdir={tmp_path}", "--mode=train",
                "--config.training.batch_size=100000"], timeout=600)
  assert_one_error_line(result, 1, "out of memory with --config.training.batch_size=100000")


def test_a_sampling_batch_larger_than_the_run_is_cut_to_it():
  config = tiny_config()
  config.sampling.batch_size = 100000
  assert sample_lib.batch_size_for(config, 6) == 6
  config.sampling.batch_size = 4
  assert sample_lib.batch_size_for(config, 6) == 4


def test_reference_stats_of_one_image_says_two_are_needed(tmp_path, random_weights_file):
  folder = tmp_path / "one"
  folder.mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
  result = cli([QUICKSTART, f"--workdir={tmp_path / 'run'}", "--mode=reference_stats",
                "--config.data.source=folder", f"--config.data.path={folder}",
                "--config.data.num_channels=3", "--config.evaluation.feature_batch_size=2",
                "--config.evaluation.metrics=fid",
                f"--config.evaluation.inception_weights={random_weights_file}"], timeout=600)
  assert_one_error_line(result, 2, "1 image(s)", "need at least 2")


# -- 14. Signals during sample and evaluate say what was kept --------------------------------------


def _start(args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen([sys.executable, "-m", "jdiff.main", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.2)
  return False


def test_sigterm_during_evaluate_keeps_finished_batches_and_says_so(workdir):
  args = [QUICKSTART, f"--workdir={workdir}", "--mode=evaluate",
          "--config.evaluation.metrics=digits_fd", "--config.evaluation.num_samples=4000",
          "--config.sampling.batch_size=4"]
  process = _start(args)
  batches = workdir / "eval" / "ancestral20" / "step_4" / "samples"
  assert _wait_for(lambda: batches.is_dir() and len(os.listdir(batches)) >= 2)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 143, stderr[-2000:]
  (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert "stopped by SIGTERM" in line and "of 1000 sample batches are kept" in line
  assert "run the same command to continue" in line and "Traceback" not in stderr
  kept = sorted(os.listdir(batches))
  assert all(name.startswith("batch_") and name.endswith(".npz") for name in kept)


def test_ctrl_c_during_sample_writes_nothing_and_says_so(workdir):
  before = snapshot(workdir / "samples")
  process = _start([QUICKSTART, f"--workdir={workdir}", "--mode=sample",
                    "--config.sampling.num_samples=40000", "--config.sampling.batch_size=4"])
  time.sleep(8)  # wherever it is then (restoring, compiling, sampling), nothing is written yet
  assert process.poll() is None
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 130, stderr[-2000:]
  (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert "stopped by SIGINT" in line and "nothing written" in line, line
  assert snapshot(workdir / "samples") == before


# -- 17. A refused evaluation leaves no empty folder -------------------------------------------


def test_a_refused_evaluation_leaves_no_empty_folder(workdir, tmp_path):
  result = cli([QUICKSTART, f"--workdir={workdir}", "--mode=evaluate",
                "--config.evaluation.metrics=fid",
                f"--config.evaluation.inception_weights={tmp_path / 'absent.pth'}"], timeout=600)
  assert_one_error_line(result, 1, "config.evaluation.inception_weights=")
  assert not (workdir / "eval").exists()
