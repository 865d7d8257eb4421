"""Pretrained weights in and out (jdiff.tools.import_weights, docs/pretrained.md).

Each format is checked against its reference: tests/fixtures/pretrained/ holds tiny models made
by the reference code itself (diffusers' UNet2DModel; Ho et al.'s TF model code; the DiffWave
reference code) with that code's own outputs on fixed inputs, made by
jdiff/tools/make_reference_fixtures_*.py (their docstrings say how). No torch, diffusers or
network is needed here.
"""

import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
from flax import traverse_util

from conftest import REPO, restore_train_state
from jdiff import builders, config_lib, parallel
from jdiff.errors import CheckpointMismatchError, ConfigError
from jdiff.tools import import_weights
from jdiff.tools.pretrained import common, diffusers_format, diffwave_pt, safetensors_io

FIXTURES = os.path.join(REPO, "tests", "fixtures", "pretrained")
DIFFUSERS_TINY = os.path.join(FIXTURES, "diffusers_tiny")
DIFFUSERS_LEGACY = os.path.join(FIXTURES, "diffusers_legacy_bin")
TF_TINY = os.path.join(FIXTURES, "ddpm_tf_tiny")
DIFFWAVE_TINY = os.path.join(FIXTURES, "diffwave_tiny")
TOLERANCE = 1e-5  # relative to the largest reference output


def relative_error(ours, reference) -> float:
  return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


def nchw_to_nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


def diffusers_outputs():
  data = np.load(os.path.join(FIXTURES, "diffusers_tiny_outputs.npz"))
  return nchw_to_nhwc(data["x"]), data["t"], nchw_to_nhwc(data["eps"])


def unet_eps(config, params, x, t):
  return builders.build_model(config).apply({"params": params}, x, t)


def restored(workdir):
  """(config, EMA params, step) as --mode=sample restores them from an imported workdir."""
  config = config_lib.load_config(os.path.join(str(workdir), "config.py"))
  params, step = builders.restore_ema_params(config, str(workdir), builders.build_model(config),
                                             parallel.make_mesh())
  return config, params, step


def run_tool(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "jdiff.tools.import_weights", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def error_lines(result):
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def copy_fixture(tmp_path, folder=DIFFUSERS_TINY):
  target = tmp_path / os.path.basename(folder)
  shutil.copytree(folder, target)
  return target


# ------------------------------------------------------------------------------------------------
# diffusers (items 1, 5, 6)


@pytest.fixture(scope="module")
def diffusers_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("imported") / "ddpm_tiny"
  import_weights.import_model("diffusers", DIFFUSERS_TINY, str(workdir))
  return workdir


def test_diffusers_import_equals_reference(diffusers_workdir):
  config, params, step = restored(diffusers_workdir)
  x, t, reference = diffusers_outputs()
  error = relative_error(unet_eps(config, params, x, t), reference)
  assert error < TOLERANCE, error
  assert step == 1 and config.training.num_steps == 1  # trained as far as it goes
  model = config.model
  assert (model.ch, tuple(model.ch_mult), model.num_res_blocks, tuple(model.attn_resolutions),
          model.num_groups) == (8, (1, 2), 2, (8,), 4)
  assert (config.data.image_size, config.diffusion.num_timesteps, config.diffusion.beta_start,
          config.diffusion.beta_end, config.diffusion.variance_type) == (16, 1000, 1e-4, 0.02,
                                                                        "fixedsmall")


def test_imported_workdir_holds_the_trainers_layout(diffusers_workdir):
  # The train state (what --mode=train resumes) restores too, with the same weights.
  config = config_lib.load_config(os.path.join(str(diffusers_workdir), "config.py"))
  step, state = restore_train_state(config, diffusers_workdir)
  x, t, reference = diffusers_outputs()
  assert step == 1
  assert relative_error(unet_eps(config, state.params, x, t), reference) < TOLERANCE


def test_diffusers_legacy_bin_equals_reference():
  # The 2022 hub layout (google/ddpm-cifar10-32): a torch .bin with query/key/value/proj_attn.
  config, params, where = diffusers_format.load(DIFFUSERS_LEGACY)
  assert where.endswith(".bin")
  x, t, reference = diffusers_outputs()
  error = relative_error(unet_eps(config, params, x, t), reference)
  assert error < TOLERANCE, error
  _, params_safetensors, _ = diffusers_format.load(DIFFUSERS_TINY)
  for a, b in zip(jax_leaves(params), jax_leaves(params_safetensors)):
    np.testing.assert_array_equal(a, b)


def jax_leaves(params):
  flat = traverse_util.flatten_dict(params)
  return [np.asarray(flat[key]) for key in sorted(flat)]


def test_import_of_export_is_bitwise_identical(tmp_path):
  config, params, _ = diffusers_format.load(DIFFUSERS_TINY)
  out = tmp_path / "exported"
  diffusers_format.export(config, params, str(out))
  config_again, params_again, _ = diffusers_format.load(str(out))
  assert (config_lib.checkpoint_identity(config_again, "train")
          == config_lib.checkpoint_identity(config, "train"))
  flat, flat_again = (traverse_util.flatten_dict(p) for p in (params, params_again))
  assert flat.keys() == flat_again.keys()
  for key in flat:
    assert flat_again[key].dtype == np.float32
    np.testing.assert_array_equal(flat_again[key], flat[key], err_msg="/".join(key))
  # And the exported file is the reference's, tensor for tensor (names, shapes, bits).
  ours = safetensors_io.load(str(out / "diffusion_pytorch_model.safetensors"))
  theirs = safetensors_io.load(os.path.join(DIFFUSERS_TINY, "diffusion_pytorch_model.safetensors"))
  assert ours.keys() == theirs.keys()
  for name in theirs:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
  with open(out / "config.json") as f:
    exported = json.load(f)
  with open(os.path.join(DIFFUSERS_TINY, "config.json")) as f:
    reference = json.load(f)
  for key in reference:
    if not key.startswith("_"):
      assert exported[key] == reference[key], key


def test_cli_import_sample_and_export(tmp_path):
  workdir, out = tmp_path / "w", tmp_path / "out"
  result = run_tool("--from=diffusers", f"--source={DIFFUSERS_TINY}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  sample = subprocess.run(
      [sys.executable, "-m", "jdiff.main", f"--config={workdir}/config.py", f"--workdir={workdir}",
       "--mode=sample", "--config.sampling.name=ddim", "--config.sampling.steps=2",
       "--config.sampling.num_samples=2", "--config.sampling.batch_size=2"],
      cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True,
      timeout=600)
  assert sample.returncode == 0, sample.stderr[-3000:]
  result = run_tool("--to=diffusers", f"--workdir={workdir}", f"--out={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["config.json", "diffusion_pytorch_model.safetensors",
                                     "scheduler_config.json"]
  with open(out / "scheduler_config.json") as f:
    scheduler = json.load(f)
  assert (scheduler["num_train_timesteps"], scheduler["beta_start"], scheduler["beta_end"],
          scheduler["variance_type"]) == (1000, 1e-4, 0.02, "fixed_small")
  # A workdir that already holds checkpoints is not overwritten.
  again = run_tool("--from=diffusers", f"--source={DIFFUSERS_TINY}", f"--workdir={workdir}")
  assert again.returncode == 2 and len(error_lines(again)) == 1, again.stderr[-2000:]
  assert "already holds checkpoints" in error_lines(again)[0]


def test_hub_id_goes_through_snapshot_download(monkeypatch):
  calls = []

  def snapshot_download(repo_id, **kwargs):
    calls.append((repo_id, kwargs))
    return DIFFUSERS_TINY
  monkeypatch.setitem(sys.modules, "huggingface_hub",
                      types.SimpleNamespace(snapshot_download=snapshot_download))
  folder = diffusers_format.resolve_source("google/ddpm-cifar10-32")
  assert folder == DIFFUSERS_TINY and calls[0][0] == "google/ddpm-cifar10-32"
  assert diffusers_format.resolve_source(DIFFUSERS_TINY) == DIFFUSERS_TINY  # a folder: no download
  assert len(calls) == 1

  def offline(repo_id, **kwargs):
    raise OSError("Connection refused\nmore detail")
  monkeypatch.setitem(sys.modules, "huggingface_hub",
                      types.SimpleNamespace(snapshot_download=offline))
  with pytest.raises(ConfigError, match=r"google/ddpm-cifar10-32: cannot download it") as info:
    diffusers_format.resolve_source("google/ddpm-cifar10-32")
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("field, value", [
    ("flip_sin_to_cos", True), ("freq_shift", 0), ("attention_head_dim", 8),
    ("downsample_padding", 1), ("norm_eps", 1e-5), ("center_input_sample", True),
    ("up_block_types", ["UpBlock2D", "AttnUpBlock2D"]), ("resnet_time_scale_shift", "scale_shift"),
    ("class_embed_type", "timestep"), ("time_embedding_type", "fourier"),
])
def test_unexpressible_diffusers_config_is_refused(field, value):
  with open(os.path.join(DIFFUSERS_TINY, "config.json")) as f:
    unet = json.load(f)
  with open(os.path.join(DIFFUSERS_TINY, "scheduler_config.json")) as f:
    scheduler = json.load(f)
  unet[field] = value
  with pytest.raises(ConfigError, match=field) as info:
    diffusers_format.jdiff_config(unet, scheduler)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("field, value", [
    ("beta_schedule", "squaredcos_cap_v2"), ("prediction_type", "v_prediction"),
    ("variance_type", "learned_range"), ("trained_betas", [0.1, 0.2]),
])
def test_unexpressible_scheduler_is_refused(field, value):
  with open(os.path.join(DIFFUSERS_TINY, "config.json")) as f:
    unet = json.load(f)
  with open(os.path.join(DIFFUSERS_TINY, "scheduler_config.json")) as f:
    scheduler = json.load(f)
  scheduler[field] = value
  with pytest.raises(ConfigError, match=field):
    diffusers_format.jdiff_config(unet, scheduler)


def test_cli_refuses_unexpressible_config_in_one_line(tmp_path):
  folder = copy_fixture(tmp_path)
  with open(folder / "config.json") as f:
    unet = json.load(f)
  unet["attention_head_dim"] = 8
  with open(folder / "config.json", "w") as f:
    json.dump(unet, f)
  result = run_tool("--from=diffusers", f"--source={folder}", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(error_lines(result)) == 1 and "attention_head_dim=8" in error_lines(result)[0]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()


def test_unused_or_missing_weights_are_an_error():
  config, _, _ = diffusers_format.load(DIFFUSERS_TINY)
  arrays = safetensors_io.load(os.path.join(DIFFUSERS_TINY, "diffusion_pytorch_model.safetensors"))
  extra = dict(arrays, **{"down_blocks.0.attentions.0.to_q.weight": np.zeros((8, 8), np.float32),
                          "class_embedding.weight": np.zeros((10, 32), np.float32)})
  with pytest.raises(CheckpointMismatchError, match="2 weights that the jdiff model has no place "
                     r"for.*class_embedding\.weight, down_blocks\.0\.attentions\.0\.to_q\.weight"):
    diffusers_format.params_from_state_dict(config, extra, "test")
  missing = {k: v for k, v in arrays.items() if k != "mid_block.attentions.0.to_k.bias"}
  with pytest.raises(CheckpointMismatchError, match=r"'mid_block\.attentions\.0\.to_k\.bias' is missing"):
    diffusers_format.params_from_state_dict(config, missing, "test")
  wrong = dict(arrays, **{"conv_in.bias": np.zeros((9,), np.float32)})
  with pytest.raises(CheckpointMismatchError, match=r"conv_in/Conv_0/bias \(9,\) \(jdiff: \(8,\)\)"):
    diffusers_format.params_from_state_dict(config, wrong, "test")


def test_finish_names_jdiff_weights_left_unset():
  config, params, _ = diffusers_format.load(DIFFUSERS_TINY)
  flat = traverse_util.flatten_dict(params)
  del flat[("mid_attn", "q", "Dense_0", "kernel")]
  with pytest.raises(CheckpointMismatchError, match="leaves 1 jdiff weights unset: mid_attn/q/Dense_0/kernel"):
    common.finish(config, flat, None)


def test_export_refuses_what_diffusers_cannot_express():
  config, params, _ = diffusers_format.load(DIFFUSERS_TINY)
  for field, value in (("model.block_type", "mbconv"), ("model.skip_type", "interpolate"),
                       ("diffusion.beta_schedule", "cosine")):
    changed = config.copy_and_resolve_references()
    section, name = field.split(".")
    changed[section][name] = value
    with pytest.raises(ConfigError, match=field):
      diffusers_format.diffusers_config(changed)
  # Weights that a UNet2DModel has no place for (adaptive depth's interpolate path) are named.
  flat = dict(traverse_util.flatten_dict(params))
  flat[("interp_in_0", "Dense_0", "kernel")] = np.zeros((8, 16), np.float32)
  with pytest.raises(CheckpointMismatchError, match="interp_in_0/Dense_0/kernel"):
    diffusers_format.state_dict_from_params(config, traverse_util.unflatten_dict(flat))


def test_safetensors_round_trip(tmp_path):
  arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, -2], np.int64),
            "c": np.zeros((0, 4), np.float16)}
  safetensors_io.save(str(tmp_path / "x.safetensors"), arrays, {"format": "pt"})
  loaded = safetensors_io.load(str(tmp_path / "x.safetensors"))
  assert list(loaded) == ["a", "b", "c"]
  for name, value in arrays.items():
    assert loaded[name].dtype == value.dtype
    np.testing.assert_array_equal(loaded[name], value)
  with open(tmp_path / "x.safetensors", "rb") as f:
    assert (8 + int.from_bytes(f.read(8), "little")) % 8 == 0  # header padded as the reference


# ------------------------------------------------------------------------------------------------
# 256 px DDPM configs (item 4)


def test_ddpm_256_configs_have_the_papers_114m_parameters():
  identities = []
  for variant in ("", "celebahq", "church", "bedroom", "cat"):
    config = config_lib.load_config(os.path.join(REPO, "configs", "ddpm_256.py") +
                                     (f":{variant}" if variant else ""))
    assert (config.data.image_size, tuple(config.model.ch_mult), config.model.ch,
            tuple(config.model.attn_resolutions), config.model.num_res_blocks) == (
                256, (1, 1, 2, 2, 4, 4), 128, (16,), 2)
    identities.append(config_lib.checkpoint_identity(config, "sample"))
  assert all(identity == identities[0] for identity in identities)  # one architecture
  # "114M" (Ho et al.; hojonathanho/diffusion run_lsun.py's 'unet2d16b2c112244')
  assert builders.parameter_count(config) == 113_673_219
  tiny = config_lib.load_config(os.path.join(REPO, "configs", "ddpm_256.py") + ":church,tiny")
  assert tiny.model.ch == 8 and tiny.training.num_steps == 6


def test_diffusers_layout_of_the_256px_models_maps_onto_the_config():
  # google/ddpm-{church,bedroom,cat,celebahq}-256's config.json (attention in block 4 of 6).
  unet = {"_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
          "block_out_channels": [128, 128, 256, 256, 512, 512], "center_input_sample": False,
          "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
          "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3,
          "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06,
          "norm_num_groups": 32, "out_channels": 3, "sample_size": 256,
          "time_embedding_type": "positional",
          "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4}
  scheduler = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
               "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
               "trained_betas": None, "variance_type": "fixed_small"}
  imported = diffusers_format.jdiff_config(unet, scheduler)
  paper = config_lib.load_config(os.path.join(REPO, "configs", "ddpm_256.py") + ":church")
  for field in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "num_groups"):
    assert tuple(np.atleast_1d(imported.model[field])) == tuple(np.atleast_1d(paper.model[field]))
  assert imported.diffusion.to_dict() == paper.diffusion.to_dict()
  # Its weights' names and shapes are exactly those a full conversion needs.
  expected = common.abstract_params(imported)
  names = diffusers_format._name_map(imported, lambda prefix, current, old: old)  # pylint: disable=protected-access
  assert {path for path, _ in names.values()} == set(expected)
  assert len(names) == len(expected)


# ------------------------------------------------------------------------------------------------
# Ho et al.'s TensorFlow checkpoints (item 2)


def tf_outputs():
  data = np.load(os.path.join(FIXTURES, "ddpm_tf_tiny_outputs.npz"))
  return data["x"], data["t"], data["eps_ema"], data["eps_raw"]


def test_ddpm_tf_import_equals_reference():
  pytest.importorskip("tensorflow")
  from jdiff.tools.pretrained import ddpm_tf  # pylint: disable=g-import-not-at-top
  config, ema_params, raw_params, step, _ = ddpm_tf.load(TF_TINY, num_groups=4, image_size=16)
  x, t, eps_ema, eps_raw = tf_outputs()
  assert step == 1234
  error_ema = relative_error(unet_eps(config, ema_params, x, t), eps_ema)
  error_raw = relative_error(unet_eps(config, raw_params, x, t), eps_raw)
  assert error_ema < TOLERANCE and error_raw < TOLERANCE, (error_ema, error_raw)
  config_raw, only_raw, none, _, _ = ddpm_tf.load(TF_TINY, weights="raw", num_groups=4,
                                                  image_size=16)
  assert none is None
  assert relative_error(unet_eps(config_raw, only_raw, x, t), eps_raw) < TOLERANCE


def test_ddpm_tf_workdir_samples_ema_and_trains_from_raw(tmp_path):
  pytest.importorskip("tensorflow")
  workdir = tmp_path / "ddpm_tf"
  import_weights.import_model("ddpm_tf", os.path.join(TF_TINY, "model.ckpt-1234"), str(workdir),
                              num_groups=4, image_size=16)
  config, params, step = restored(workdir)
  x, t, eps_ema, eps_raw = tf_outputs()
  assert step == 1234
  assert relative_error(unet_eps(config, params, x, t), eps_ema) < TOLERANCE
  _, state = restore_train_state(config, workdir)
  assert relative_error(unet_eps(config, state.params, x, t), eps_raw) < TOLERANCE


def test_ddpm_tf_unknown_or_missing_variables_are_an_error(monkeypatch):
  pytest.importorskip("tensorflow")
  from jdiff.tools.pretrained import ddpm_tf  # pylint: disable=g-import-not-at-top
  arrays, step = ddpm_tf.read_checkpoint(TF_TINY)
  # Optimizer slots and counters are no weights: ignored.
  slots = dict(arrays, **{"model/conv_in/W/Adam": arrays["model/conv_in/W"],
                          "model/conv_in/W/Adam_1": arrays["model/conv_in/W"],
                          "beta1_power": np.float32(0.9)})
  monkeypatch.setattr(ddpm_tf, "read_checkpoint", lambda path: (slots, step))
  ddpm_tf.load("x", num_groups=4, image_size=16)
  extra = dict(arrays, **{"model/up_0/block_0/extra/W": np.zeros((3, 3), np.float32)})
  monkeypatch.setattr(ddpm_tf, "read_checkpoint", lambda path: (extra, step))
  with pytest.raises(CheckpointMismatchError, match=r"model/up_0/block_0/extra/W"):
    ddpm_tf.load("x", num_groups=4, image_size=16)
  missing = {k: v for k, v in arrays.items() if not k.startswith("model/mid/attn_1/k/b")}
  monkeypatch.setattr(ddpm_tf, "read_checkpoint", lambda path: (missing, step))
  with pytest.raises(CheckpointMismatchError, match=r"'model/mid/attn_1/k/b' is missing"):
    ddpm_tf.load("x", num_groups=4, image_size=16)
  no_ema = {k: v for k, v in arrays.items() if not k.endswith(ddpm_tf.EMA_SUFFIX)}
  monkeypatch.setattr(ddpm_tf, "read_checkpoint", lambda path: (no_ema, step))
  with pytest.raises(CheckpointMismatchError, match="no EMA weights.*--weights=raw"):
    ddpm_tf.load("x", num_groups=4, image_size=16)


@pytest.mark.parametrize("spec, size, variance", [
    ("cifar10_ddpm.py", 32, "fixedlarge"),
    pytest.param("ddpm_256.py:church", 256, "fixedsmall", marks=pytest.mark.slow)])  # ~25 s
def test_ddpm_tf_reads_the_released_architectures(monkeypatch, spec, size, variance):
  # Variables named and shaped as Ho et al.'s released cifar10 / 256px checkpoints (with EMA).
  from jdiff.tools.pretrained import ddpm_tf  # pylint: disable=g-import-not-at-top
  paper = config_lib.load_config(os.path.join(REPO, "configs", spec))
  shapes = common.abstract_params(paper)
  arrays = {}
  for tf_name, jdiff_name in ddpm_tf._name_map(paper).items():  # pylint: disable=protected-access
    arrays[tf_name] = np.zeros(shapes[tuple(jdiff_name.split("/"))].shape, np.float32)
  arrays.update({name + ddpm_tf.EMA_SUFFIX: value for name, value in arrays.items()})
  arrays["global_step"] = np.int64(790000)
  monkeypatch.setattr(ddpm_tf, "read_checkpoint", lambda path: (arrays, 790000))
  config, _, _, step, _ = ddpm_tf.load("released")
  assert step == 790000
  assert config.data.image_size == size and config.diffusion.variance_type == variance
  for field in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "num_groups"):
    assert tuple(np.atleast_1d(config.model[field])) == tuple(np.atleast_1d(paper.model[field]))


# ------------------------------------------------------------------------------------------------
# DiffWave (item 3)


def diffwave_reference():
  data = np.load(os.path.join(FIXTURES, "diffwave_tiny_outputs.npz"))
  return np.transpose(data["audio"], (0, 2, 1)), data["steps"][:, 0], np.transpose(data["eps"],
                                                                                   (0, 2, 1))


def diffwave_load():
  arrays = {k: np.asarray(v, np.float32) for k, v in
            diffwave_pt.read_checkpoint(os.path.join(DIFFWAVE_TINY, "100.pkl")).items()}
  with open(os.path.join(DIFFWAVE_TINY, "config.json")) as f:
    config = diffwave_pt.jdiff_config(arrays, json.load(f))
  return config, arrays


def test_diffwave_import_equals_reference():
  config, arrays = diffwave_load()
  params = diffwave_pt.params_from_state_dict(config, arrays, "100.pkl")
  d = config.diffwave
  assert (d.residual_channels, d.skip_channels, d.num_layers, d.dilation_cycle,
          tuple(d.embed_dims), config.diffusion.num_timesteps) == (8, 8, 4, 2, (16, 32, 32), 200)
  model = diffwave_pt.reference_model(config)
  assert model.step_in_residual and model.mel_upsampler == "shared"
  audio, steps, reference = diffwave_reference()
  error = relative_error(model.apply({"params": params}, audio, steps), reference)
  assert error < TOLERANCE, error
  # jdiff's own residual (without the reference's in-place step embedding) is another model.
  other = model.clone(step_in_residual=False).apply({"params": params}, audio, steps)
  assert relative_error(other, reference) > 0.01


def test_diffwave_vocoder_import_equals_reference():
  # philsyn/DiffWave-Vocoder's WaveNet_vocoder: a weight-normed mel upsampler in every layer.
  folder = os.path.join(FIXTURES, "diffwave_vocoder_tiny")
  arrays = {k: np.asarray(v, np.float32) for k, v in
            diffwave_pt.read_checkpoint(os.path.join(folder, "100.pkl")).items()}
  with open(os.path.join(folder, "config.json")) as f:
    config = diffwave_pt.jdiff_config(arrays, json.load(f))
  d = config.diffwave
  assert (d.n_mels, d.mel_hop, d.mel_upsampler, d.num_layers) == (80, 256, "per_layer", 2)
  assert config.data.audio_length % d.mel_hop == 0
  config_lib.validate(config)
  params = diffwave_pt.params_from_state_dict(config, arrays, "100.pkl")
  data = np.load(os.path.join(FIXTURES, "diffwave_vocoder_tiny_outputs.npz"))
  eps = diffwave_pt.reference_model(config).apply(
      {"params": params}, np.transpose(data["audio"], (0, 2, 1)), data["steps"][:, 0],
      mel=np.transpose(data["mel"], (0, 2, 1)))
  error = relative_error(eps, np.transpose(data["eps"], (0, 2, 1)))
  assert error < TOLERANCE, error


def test_diffwave_unknown_or_missing_weights_are_an_error():
  config, arrays = diffwave_load()
  extra = dict(arrays, **{"residual_layer.residual_blocks.1.cond_conv.weight": np.ones((2, 2, 1),
                                                                                       np.float32)})
  with pytest.raises(CheckpointMismatchError, match=r"1 weights that the jdiff model has no place "
                     r"for.*residual_blocks\.1\.cond_conv\.weight"):
    diffwave_pt.params_from_state_dict(config, extra, "x.pkl")
  missing = {k: v for k, v in arrays.items() if k != "residual_layer.residual_blocks.3.res_conv.bias"}
  with pytest.raises(CheckpointMismatchError, match=r"residual_blocks\.3\.res_conv\.bias' is missing"):
    diffwave_pt.params_from_state_dict(config, missing, "x.pkl")


@pytest.mark.parametrize("variant", ["diffwave_tiny", "diffwave_vocoder_tiny"])
def test_diffwave_workdir(tmp_path, variant):
  """The import writes a workdir that restores into the reference's network (builders passes
  config.diffwave.step_in_residual / mel_upsampler on to DiffWave)."""
  folder = os.path.join(FIXTURES, variant)
  workdir = tmp_path / "diffwave"
  import_weights.import_model("diffwave", os.path.join(folder, "100.pkl"), str(workdir),
                              diffwave_config=os.path.join(folder, "config.json"))
  config, params, step = restored(workdir)
  assert step == 100 and config.training.num_steps == 100
  data = np.load(os.path.join(FIXTURES, f"{variant}_outputs.npz"))
  mel = {"mel": np.transpose(data["mel"], (0, 2, 1))} if "mel" in data else {}
  eps = builders.build_model(config).apply(
      {"params": params}, np.transpose(data["audio"], (0, 2, 1)), data["steps"][:, 0], **mel)
  assert relative_error(eps, np.transpose(data["eps"], (0, 2, 1))) < TOLERANCE


def test_fixtures_stay_small():
  sizes = {}
  for root, _, names in os.walk(FIXTURES):
    for name in names:
      sizes[os.path.relpath(os.path.join(root, name), FIXTURES)] = os.path.getsize(
          os.path.join(root, name))
  assert max(sizes.values()) < 400_000, sizes
  assert sum(sizes.values()) < 2_000_000, sizes
