"""Configs: defaults, loading by path (with a variant), validation, and what a checkpoint holds.

Every value is checked before anything is compiled. A bad value raises ConfigError whose
message is one line: the field, the value, what is allowed; `main` prints it and exits 2. This
module imports no jax (nor anything that does), so a bad flag fails at once; validation never
changes the config (a model preset is resolved by `resolved_model_config`, in a copy).
"""

import importlib.util
import os
import re
from typing import Any, Callable, Sequence, Tuple

import ml_collections

from jdiff import choices
from jdiff import samplers
from jdiff.errors import ConfigError
from jdiff.models import presets

MODES = choices.MODES


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(value):
  return _is_int(value) and value > 0


def non_negative_int(value):
  return _is_int(value) and value >= 0


def one_of(*allowed) -> Tuple[Callable[[Any], bool], str]:
  return (lambda value: value in allowed), f"one of {list(allowed)}"


def in_range(low, high, low_open=False, high_open=False) -> Tuple[Callable[[Any], bool], str]:
  def check(value):
    if not _is_number(value):
      return False
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return above and below
  return check, f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


POSITIVE_INT = (positive_int, "a positive integer")
STRING = ((lambda value: isinstance(value, str)), "a string")
NON_NEGATIVE_INT = (non_negative_int, "an integer >= 0")
BOOL = ((lambda value: isinstance(value, bool)), "true or false")
POSITIVE_INTS = ((lambda value: isinstance(value, (tuple, list)) and len(value) > 0
                  and all(positive_int(v) for v in value)), "a non-empty list of positive integers")
INTS = ((lambda value: isinstance(value, (tuple, list)) and all(positive_int(v) for v in value)),
        "a list of positive integers")

class _Allowed:
  """'one of [...]' of a list read when the message is made (the sampler registry may grow after
  this module is imported)."""

  def __init__(self, values: Callable[[], Sequence[Any]]):
    self._values = values

  def __str__(self):
    return f"one of {list(self._values())}"

  __format__ = lambda self, spec: format(str(self), spec)


def registered_sampler() -> Tuple[Callable[[Any], bool], _Allowed]:
  """sampling.name: a sampler of the registry (jdiff/samplers.py)."""
  return (lambda value: value in samplers.REGISTRY), _Allowed(samplers.names)


def registered_schedule() -> Tuple[Callable[[Any], bool], _Allowed]:
  """sampling.schedule: 'auto' or a schedule some registered sampler takes."""
  values = lambda: ("auto",) + samplers.all_schedules()
  return (lambda value: value in values()), _Allowed(values)


# (field, (check, what is allowed)); each later module adds its fields here.
RULES: Sequence[Tuple[str, Tuple[Callable[[Any], bool], str]]] = (
    ("seed", NON_NEGATIVE_INT),
    ("cpu.convolutions", one_of(*choices.CPU_CONVOLUTIONS)),
    ("cpu.filter_grad", one_of(*choices.FILTER_GRADS)),
    ("cpu.host_memory", one_of(*choices.HOST_MEMORY)),
    ("data.source", one_of(*choices.DATA_SOURCES)),
    ("data.image_size", POSITIVE_INT),
    ("data.num_channels", one_of(1, 3)),
    ("data.random_flip", BOOL),
    ("data.streaming", one_of("auto", "always", "never")),
    ("data.label_key", STRING),
    ("model.ch", POSITIVE_INT),
    ("model.ch_mult", POSITIVE_INTS),
    ("model.num_res_blocks", POSITIVE_INT),
    ("model.attn_resolutions", INTS),
    ("model.dropout", in_range(0.0, 1.0, high_open=True)),
    ("model.num_groups", POSITIVE_INT),
    ("model.skip_type", one_of(*choices.SKIP_TYPES)),
    ("model.block_type", one_of(*choices.BLOCK_TYPES)),
    ("model.preset", one_of("", *presets.PRESETS)),
    ("model.remat", BOOL),
    ("model.dtype", one_of(*choices.PRECISIONS)),
    ("diffusion.num_timesteps", ((lambda value: _is_int(value) and value >= 2),
                                 "an integer >= 2 (a diffusion needs at least two steps)")),
    ("diffusion.beta_schedule", one_of(*choices.BETA_SCHEDULES)),
    ("diffusion.beta_start", in_range(0.0, 1.0, low_open=True, high_open=True)),
    ("diffusion.beta_end", in_range(0.0, 1.0, low_open=True, high_open=True)),
    ("diffusion.variance_type", one_of(*choices.VARIANCE_TYPES)),
    ("depth.training", one_of(*choices.DEPTH_TRAINING_SCHEMES)),
    ("depth.power", in_range(0.0, float("inf"))),
    ("depth.dispatch", one_of(*choices.DEPTH_DISPATCHES)),
    ("training.batch_size", POSITIVE_INT),
    ("training.num_steps", POSITIVE_INT),
    ("training.learning_rate", in_range(0.0, 1.0, low_open=True)),
    ("training.warmup_steps", NON_NEGATIVE_INT),
    ("training.grad_clip", in_range(0.0, float("inf"))),
    ("training.ema_decay", in_range(0.0, 1.0, high_open=True)),
    ("training.ema_warmup", BOOL),
    ("training.log_every", POSITIVE_INT),
    ("training.checkpoint_every", POSITIVE_INT),
    ("training.keep_checkpoints", POSITIVE_INT),
    ("training.loss", one_of(*choices.LOSSES)),
    ("training.iwdiff_k", POSITIVE_INT),
    ("training.iwdiff_accumulate", BOOL),
    ("training.iwdiff_weights", one_of(*choices.IWDIFF_WEIGHTS)),
    ("training.timestep_sampler", one_of(*choices.TIMESTEP_SAMPLERS)),
    ("training.extra_updates", NON_NEGATIVE_INT),
    ("training.crop_mel_frames", NON_NEGATIVE_INT),
    ("sampling.batch_size", POSITIVE_INT),
    ("sampling.num_samples", POSITIVE_INT),
    ("sampling.clip_x0", one_of(*choices.CLIP_X0)),
    ("sampling.name", registered_sampler()),
    ("sampling.steps", POSITIVE_INT),
    ("sampling.respacing", ((lambda value: value in choices.RESPACINGS or (
        isinstance(value, str) and choices.parse_section_counts(value) is not None)),
                            f"one of {list(choices.RESPACINGS)} or counts per section like '10,10,10'")),
    ("sampling.schedule", registered_schedule()),
    ("sampling.eta", in_range(0.0, 1.0)),
    ("sampling.kappa", in_range(0.0, 1.0)),
    ("sampling.fastdpm_kind", one_of(*choices.FASTDPM_KINDS)),
    ("sampling.var_domain", one_of(*choices.VAR_DOMAINS)),
    ("sampling.order", one_of(*choices.SOLVER_ORDERS)),
    ("sampling.lower_order_final", BOOL),
    ("sampling.unipc_variant", one_of(*choices.UNIPC_VARIANTS)),
    ("model.kind", one_of(*choices.MODEL_KINDS)),
    ("gan.z_dim", POSITIVE_INT),
    ("gan.g_ch", POSITIVE_INT),
    ("gan.d_ch", POSITIVE_INT),
    ("gan.n_dis", POSITIVE_INT),
    ("gan.learning_rate", in_range(0.0, 1.0, low_open=True)),
    ("gan.beta1", in_range(0.0, 1.0, high_open=True)),
    ("gan.beta2", in_range(0.0, 1.0, high_open=True)),
    ("surrogate.kind", one_of(*choices.SURROGATE_KINDS)),
    ("surrogate.t_mid", NON_NEGATIVE_INT),
    ("surrogate.t_mids", ((lambda value: isinstance(value, (tuple, list)) and len(value) > 0
                           and all(non_negative_int(v) for v in value)),
                          "a non-empty list of integers >= 0")),
    ("bench.batch_sizes", POSITIVE_INTS),
    ("bench.kind", one_of(*choices.BENCH_KINDS)),
    ("bench.num_iters", POSITIVE_INT),
    ("bench.sampler_steps", NON_NEGATIVE_INT),
    ("bench.samplers", ((lambda value: isinstance(value, (tuple, list)) and all(
        v in samplers.bench_families() for v in value)),
                        f"a list of sampler families from {list(samplers.bench_families())}")),
    ("bench.quality_samples", NON_NEGATIVE_INT),
    ("bench.skip_types", ((lambda value: isinstance(value, (tuple, list)) and all(
        v in choices.SKIP_TYPES for v in value)),
                          f"a list of skip types from {list(choices.SKIP_TYPES)}")),
    ("bench.depth_parts", ((lambda value: isinstance(value, (tuple, list)) and len(value) > 0
                             and all(v in choices.BENCH_DEPTH_PARTS for v in value)),
                            f"a non-empty list from {list(choices.BENCH_DEPTH_PARTS)}")),
    ("evaluation.name", ((lambda value: isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.-]*", value)
                          is not None), "a folder name of letters, digits, '_', '.', '-' (or '')")),
    ("evaluation.num_samples", ((lambda value: _is_int(value) and value >= 2),
                                "an integer >= 2 (every metric compares sets: a covariance, "
                                "a kernel mean)")),
    ("evaluation.metrics", ((lambda value: isinstance(value, (tuple, list)) and len(value) > 0
                             and all(v in choices.EVALUATION_METRICS for v in value)),
                            f"a non-empty list from {list(choices.EVALUATION_METRICS)}")),
    ("evaluation.reference_stats", STRING),
    ("evaluation.reference_split", STRING),
    ("evaluation.inception_weights", STRING),
    ("evaluation.fid_preprocessing", one_of(*choices.FID_PREPROCESSINGS)),
    ("evaluation.feature_batch_size", POSITIVE_INT),
    ("evaluation.is_splits", POSITIVE_INT),
    ("evaluation.kid_subsets", POSITIVE_INT),
    ("evaluation.kid_subset_size", POSITIVE_INT),
    ("evaluation.bpd_examples", NON_NEGATIVE_INT),
    ("evaluation.bpd_split", STRING),
    ("evaluation.sc09_reference", STRING),
    ("sampling.mel_split", STRING),
    # Audio (data.kind='audio', model.kind='diffwave').
    ("data.kind", one_of(*choices.DATA_KINDS)),
    ("data.audio_length", POSITIVE_INT),
    ("data.sample_rate", POSITIVE_INT),
    ("data.resample", BOOL),
    ("data.peak_normalize", ((lambda value: isinstance(value, (int, float))
                              and not isinstance(value, bool) and 0.0 <= value <= 1.0),
                             "a number in [0, 1] (0: clips as recorded)")),
    ("data.words", ((lambda value: isinstance(value, (tuple, list))
                     and all(isinstance(v, str) and v for v in value)), "a list of folder names")),
    ("diffwave.residual_channels", POSITIVE_INT),
    ("diffwave.skip_channels", POSITIVE_INT),
    ("diffwave.num_layers", POSITIVE_INT),
    ("diffwave.dilation_cycle", POSITIVE_INT),
    ("diffwave.embed_dims", ((lambda value: isinstance(value, (tuple, list)) and len(value) == 3
                              and all(positive_int(v) for v in value) and value[0] % 2 == 0),
                             "three positive integers (sinusoidal, hidden, output; first even)")),
    ("diffwave.weight_norm", BOOL),
    ("diffwave.n_mels", NON_NEGATIVE_INT),
    ("diffwave.mel_hop", (lambda value: choices.mel_upsampler_stride(value) > 0,
                          "s * s with s even (16, 36, 64, ..., 256): the upsampler's two "
                          "transposed convs each stretch time by s")),
    ("diffwave.mel_n_fft", POSITIVE_INT),
)


def get_field(config: ml_collections.ConfigDict, field: str):
  node = config
  for part in field.split("."):
    if part not in node:
      raise ConfigError(f"config.{field}: missing (the config file must define it)")
    node = node[part]
  return node


def _check(ok: bool, field: str, value, allowed: str):
  if not ok:
    raise ConfigError(f"config.{field}={value!r}: must be {allowed}")


def resolved_model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.model with the fields of config.model.preset (Table 4.3) applied: a copy, so the
  config itself keeps what the user wrote."""
  model = ml_collections.ConfigDict(config.model.to_dict())
  if model.get("preset"):
    model.update(presets.PRESETS[model.preset])
  return model


def split_comma_lists(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Splits the comma-joined strings of list fields in place and returns config:
  `--config.evaluation.metrics=fid,kid` arrives from config_flags as ('fid,kid',) and means
  ('fid', 'kid'). Only strings of tuples / lists are split; a string field stays as it is."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      split_comma_lists(value)
    elif isinstance(value, (tuple, list)) and any(isinstance(v, str) and "," in v for v in value):
      parts = [p.strip() for v in value for p in (v.split(",") if isinstance(v, str) else [v])]
      config[key] = type(value)(p for p in parts if p != "")
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad field; changes nothing."""
  for field, (check, allowed) in RULES:
    _check(check(get_field(config, field)), field, get_field(config, field), allowed)
  # Relations between fields.
  training = config.training
  if training.loss == "hybrid":
    _check(config.diffusion.variance_type == "learned_range", "diffusion.variance_type",
           config.diffusion.variance_type, "'learned_range' with training.loss='hybrid'")
  else:
    _check(config.diffusion.variance_type != "learned_range", "training.loss", training.loss,
           "'hybrid' with diffusion.variance_type='learned_range' (only it trains the variance)")
  if training.timestep_sampler == "loss_aware":
    _check(config.depth.training == "full", "training.timestep_sampler", training.timestep_sampler,
           "'uniform' when depth.training is not 'full' (the depth schemes draw t themselves); "
           f"depth.training is {config.depth.training!r}")
  else:
    _check(training.extra_updates == 0, "training.extra_updates", training.extra_updates,
           "0 unless training.timestep_sampler='loss_aware' (they only feed its loss history)")
  model, data = resolved_model_config(config), config.data
  _check(data.image_size % 2 ** (len(model.ch_mult) - 1) == 0, "data.image_size", data.image_size,
         f"divisible by 2**(len(model.ch_mult) - 1) = {2 ** (len(model.ch_mult) - 1)}")
  for mult in model.ch_mult:
    _check((model.ch * mult) % model.num_groups == 0, "model.num_groups", model.num_groups,
           f"a divisor of every level's channels (model.ch * ch_mult = {model.ch * mult})")
  _check(config.diffusion.beta_end >= config.diffusion.beta_start, "diffusion.beta_end",
         config.diffusion.beta_end, f">= diffusion.beta_start ({config.diffusion.beta_start})")
  if data.source in ("folder", "npz", "idx"):
    _check(isinstance(data.path, str) and data.path != "", "data.path", data.path,
           f"a file or folder path when data.source={data.source!r}")
  if "digits_fd" in config.evaluation.metrics:
    _check(data.num_channels == 1, "evaluation.metrics", tuple(config.evaluation.metrics),
           "without 'digits_fd' when data.num_channels=3 (Digits FD scores grayscale digits)")
  _validate_audio(config)
  _validate_sampling(config)
  _validate_classes(config)


def _validate_classes(config: ml_collections.ConfigDict) -> None:
  """Class conditioning needs labels and the U-Net; guidance needs a trained null label."""
  num_classes = config.model.num_classes
  _check(_is_int(num_classes) and num_classes >= 0, "model.num_classes", num_classes,
         "an integer >= 0 (0: unconditional)")
  _check(0.0 <= config.training.p_uncond < 1.0, "training.p_uncond", config.training.p_uncond,
         "in [0, 1)")
  label_key = config.data.get("label_key", "")
  if num_classes:
    _check(config.model.kind == "unet", "model.num_classes", num_classes,
           "0 unless model.kind='unet' (class conditioning is the U-Net's)")
    _check(bool(label_key), "data.label_key", label_key,
           "the labels to read when model.num_classes > 0 ('label' for TFDS, digits and folders; "
           "the label array's name for npz)")
    _check(_is_int(config.sampling.class_label)
           and -1 <= config.sampling.class_label < num_classes, "sampling.class_label",
           config.sampling.class_label, f"-1 (every class) or a class 0..{num_classes - 1}")
  else:
    _check(config.training.p_uncond == 0.0, "training.p_uncond", config.training.p_uncond,
           "0 unless model.num_classes > 0 (it drops class labels)")
  guidance = config.sampling.guidance
  _check(isinstance(guidance, (int, float)) and guidance >= 0, "sampling.guidance", guidance,
         "a number >= 0")
  if guidance:
    _check(num_classes > 0 and config.training.p_uncond > 0, "sampling.guidance", guidance,
           "0 unless the model is class-conditional (model.num_classes > 0) and was trained with "
           "training.p_uncond > 0 (guidance needs its unconditional half)")


def _validate_audio(config: ml_collections.ConfigDict) -> None:
  """Audio needs DiffWave and an audio source, and the other way round."""
  data, kind = config.data, config.model.kind
  audio = data.kind == "audio"
  _check(audio == (kind == "diffwave"), "model.kind", kind,
         "'diffwave' with data.kind='audio'" if audio else
         f"one of {[k for k in choices.MODEL_KINDS if k != 'diffwave']} with data.kind='image' "
         "(set data.kind='audio' for DiffWave)")
  if audio:
    _check(data.source in choices.AUDIO_SOURCES + ("folder",), "data.source", data.source,
           f"one of {list(choices.AUDIO_SOURCES + ('folder',))} with data.kind='audio'")
    _check(not data.random_flip, "data.random_flip", data.random_flip,
           "false with data.kind='audio' (a waveform played backwards is not speech)")
    _check(data.num_channels == 1, "data.num_channels", data.num_channels, "1 (mono) for audio")
    _check(config.depth.training == "full" and config.depth.power == 0, "depth.training",
           config.depth.training, "'full' with depth.power=0 for DiffWave (adaptive depth is a "
           "U-Net feature)")
    if config.diffwave.n_mels:
      hop = config.diffwave.mel_hop  # the upsampler makes mel_hop samples per mel frame
      _check(data.audio_length % hop == 0, "data.audio_length", data.audio_length,
             f"a multiple of diffwave.mel_hop ({hop}) with diffwave.n_mels > 0 (one mel frame "
             f"per {hop} samples)")
      _check(config.diffwave.mel_n_fft >= hop, "diffwave.mel_n_fft", config.diffwave.mel_n_fft,
             f">= diffwave.mel_hop ({hop}), so that the STFT windows skip no sample")
      _check(config.training.crop_mel_frames * hop <= data.audio_length,
             "training.crop_mel_frames", config.training.crop_mel_frames,
             f"<= {data.audio_length // hop} (data.audio_length / diffwave.mel_hop: a crop lies "
             "inside its clip)")
    _check(tuple(config.evaluation.metrics) == ("sc09_fd",), "evaluation.metrics",
           tuple(config.evaluation.metrics), "('sc09_fd',) for audio (the image metrics and "
           "bits/dim of 8-bit pixels do not apply; python -m jdiff.tools.audio_table scores it)")
  else:
    _check("sc09_fd" not in config.evaluation.metrics, "evaluation.metrics",
           tuple(config.evaluation.metrics), "without 'sc09_fd' for images (it scores SC09 audio)")
    _check(data.source not in choices.AUDIO_SOURCES, "data.source", data.source,
           f"an image source with data.kind='image' (set data.kind='audio' for {data.source!r})")
  if not (audio and config.diffwave.n_mels):
    _check(config.training.crop_mel_frames == 0, "training.crop_mel_frames",
           config.training.crop_mel_frames, "0 unless the model is a mel-conditioned DiffWave "
           "(diffwave.n_mels > 0; the vocoder's reference trains on crops, the others on whole "
           "examples)")


def _validate_sampling(config: ml_collections.ConfigDict) -> None:
  """Sampler fields that depend on each other (the registry's rules for sampling.name: steps,
  schedule, its own relations; surrogate)."""
  s, d = config.sampling, config.diffusion
  sampler = samplers.get(s.name)
  if sampler.uses_steps:
    _check(s.steps <= d.num_timesteps, "sampling.steps", s.steps,
           f"<= diffusion.num_timesteps ({d.num_timesteps})")
    if sampler.min_steps > 1:
      _check(s.steps >= sampler.min_steps, "sampling.steps", s.steps,
             f">= {sampler.min_steps} for sampling.name={s.name!r}")
  if "clip_denoised" in s:
    raise ConfigError(f"the config sets sampling.clip_denoised={s.clip_denoised!r}, a field that "
                      "sampling.clip_x0 replaced ('auto' = each sampler's reference default, "
                      "'on', 'off')")
  if sampler.schedules:
    _check(s.schedule in ("auto",) + sampler.schedules, "sampling.schedule", s.schedule,
           f"one of {['auto', *sampler.schedules]} for sampling.name={s.name!r}")
  if sampler.validate is not None:
    sampler.validate(config, _check)
  size = config.data.image_size
  if config.model.kind == "sngan":
    _check(size >= 4 and size & (size - 1) == 0, "data.image_size", size,
           "4 * 2^k (a power of two >= 4) for model.kind='sngan'")
  surrogate = config.surrogate
  if surrogate.kind != "none":
    for field, value in (("t_mid", surrogate.t_mid), ("t_mids", max(surrogate.t_mids))):
      _check(value <= d.num_timesteps, f"surrogate.{field}", surrogate[field],
             f"<= diffusion.num_timesteps ({d.num_timesteps})")
    _check(bool(surrogate.workdir) and bool(surrogate.config), "surrogate.workdir",
           surrogate.workdir, "the surrogate's trained workdir, with surrogate.config its config "
           f"file, when surrogate.kind={surrogate.kind!r}")


# What a checkpoint holds. A train run resumes only a checkpoint whose values of these fields
# equal its own (model, diffusion, image shape and the objective); sampling and evaluation need
# the model, diffusion and image shape. How it computes (model.remat, model.dtype, config.cpu),
# how it trains (batch size, learning rate, steps, logging) and which
# fixed variance the sampler uses (fixedlarge / fixedsmall) may change between runs. preset: its
# resolved fields count.
_COMPUTE_ONLY_MODEL_FIELDS = ("remat", "dtype", "preset")
_OBJECTIVE_FIELDS = ("training.loss", "training.iwdiff_k", "training.timestep_sampler",
                     "training.extra_updates", "depth.training", "gan.n_dis")
CHECKPOINT_PURPOSES = ("train", "sample")


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"section.field": value} of a nested dict (a config's to_dict())."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def checkpoint_identity(config: ml_collections.ConfigDict, purpose: str) -> dict:
  """{field: value} that a checkpoint written under `config` must match to be resumed
  (purpose 'train') or sampled from (purpose 'sample')."""
  if purpose not in CHECKPOINT_PURPOSES:
    raise ValueError(f"purpose={purpose!r}: must be one of {CHECKPOINT_PURPOSES}")
  identity = {}
  resolved = config.to_dict()
  resolved["model"] = resolved_model_config(config).to_dict()
  for field, value in flatten(resolved).items():
    section, _, name = field.partition(".")
    audio_fields = ("data.kind", "data.audio_length", "data.sample_rate")
    holds = ((section == "model" and name not in _COMPUTE_ONLY_MODEL_FIELDS)
             or (config.model.kind == "diffwave"
                 and (section == "diffwave" or field in audio_fields))
             or section == "diffusion" or field in ("data.image_size", "data.num_channels")
             or (config.model.kind == "sngan" and field in ("gan.z_dim", "gan.g_ch", "gan.d_ch")))
    trains = purpose == "train" and (
        (field in _OBJECTIVE_FIELDS and (field != "gan.n_dis" or config.model.kind == "sngan"))
        # Bucketed training draws its batches by k(t), so c shapes what was learned.
        or (field == "depth.power" and config.depth.training == "bucketed")
        or (field == "training.iwdiff_weights" and config.training.loss == "iwdiff"))
    if field == "model.num_classes" and not value:
      continue  # unconditional, as every checkpoint made before class conditioning
    if field == "diffusion.variance_type" and value != "learned_range":
      # Fixed variances train the same weights (only eps is learned) and differ only in how the
      # sampler adds noise: a checkpoint trained under one samples under the other. (A
      # learned-range checkpoint still differs from a fixed one by its output channels.)
      continue
    if holds or trains:
      identity[field] = list(value) if isinstance(value, tuple) else value
  return identity


def default_config() -> ml_collections.ConfigDict:
  """Every field with its default (Ho et al.'s CIFAR-10 setup); configs/*.py override it."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.distributed = False  # jax.distributed.initialize() (multi-host launches set it)
  # The CPU backend's tuning (jdiff/cpu); ignored on GPU and TPU, which run plain XLA.
  config.cpu = ml_collections.ConfigDict(dict(
      convolutions="winograd",  # winograd | eigen | ynn: XLA:CPU's kernels for convolutions
                                # (winograd: large 3x3 ones as Winograd F(2x2,3x3), the rest on
                                # Eigen; eigen: all on Eigen; ynn: XLA's default)
      filter_grad="auto",       # auto | matmul | xla: conv weight gradients as matrix products
                                # (auto: for gradients inside lax.switch / scan, for DiffWave and
                                # under convolutions=ynn) | XLA's own
      host_memory="keep",       # keep | release: glibc keeps the memory XLA:CPU frees for the
                                # next step (no page faults) | glibc's defaults
  ))

  config.data = ml_collections.ConfigDict(dict(
      source="cifar10",   # a TFDS name, "digits" (sklearn), or a local "folder" / "npz" / "idx"
      path="",            # local sources: the folder or file
      npz_key="",         # data.source=npz: the array to train on ("" = images/x/train_x, or the
                          # only uint8 image array in the file)
      data_dir="",        # TFDS data_dir ("" = TFDS default)
      streaming="auto",   # TFDS sets: read each step's rows by index from array_record files
                          # (always) | decode the split once into <data_dir>/jdiff_cache/*.npy
                          # (never) | auto: stream above 2 GiB decoded, else the cache (jdiff/data.py)
      label_key="",       # class labels (class-conditional models): "" = none (unconditional);
                          # "label": TFDS sets' "label" feature (any TFDS feature name works),
                          # sklearn digits' target, a folder's classes (each image's sub-folder of
                          # <path>/<split>/ or <path>/, numbered in sorted order of folder names);
                          # data.source=npz: the name of the integer label array in the .npz
      split="train",
      image_size=32,
      num_channels=3,
      random_flip=True,
      kind="image",        # image | audio (waveforms [L, 1]; model.kind must be diffwave)
      audio_length=16000,  # audio: samples per clip (shorter clips zero-padded, longer cut)
      sample_rate=16000,   # audio: Hz; files at other rates are resampled (or refused)
      resample=True,       # audio: resample other rates (False: refuse them)
      words=(),            # audio folder / archive: keep only these word folders (() = all)
      peak_normalize=0.0,  # audio: > 0 scales each clip to this peak |x| (0 = as recorded)
  ))
  config.model = ml_collections.ConfigDict(dict(
      ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
      num_groups=32, skip_type="zero", remat=False, dtype="float32",
      kind="unet",       # unet (the diffusion model) | sngan (config.gan; a surrogate for sampling)
      block_type="res",  # res | mbconv (MBConv + squeeze-excitation, Table 4.3)
      preset="",         # "" or a Table 4.3 name (jdiff/models/presets.py); sets block_type,
                         # ch_mult, num_res_blocks and ch
      num_classes=0,     # > 0: class-conditional U-Net (labels from data.label_key; a label
                         # embedding added to the timestep embedding; jdiff/conditioning.py)
  ))
  config.diffusion = ml_collections.ConfigDict(dict(
      num_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
      variance_type="fixedlarge",
  ))
  config.depth = ml_collections.ConfigDict(dict(
      training="full",  # full | random | bucketed
      power=0.0,        # c of k(t) = min(N-1, floor(N - N (1 - t)^c)) used by samplers/bucketing
      dispatch="host",  # random/bucketed training: host (one compiled step per depth, picked from
                        # (seed, step)) | switch (one step, lax.switch; ~10x slower on XLA:CPU)
  ))
  config.training = ml_collections.ConfigDict(dict(
      batch_size=128, num_steps=800_000, learning_rate=2e-4, warmup_steps=5000, grad_clip=1.0,
      ema_decay=0.9999, log_every=100, checkpoint_every=5000, keep_checkpoints=3,
      ema_warmup=False,           # decay min(ema_decay, (1+step)/(10+step)): for short runs; off = Ho's code
      loss="simple",              # simple | hybrid (needs variance_type=learned_range) | iwdiff
      iwdiff_k=2,                 # IWDiff noise draws per example
      iwdiff_accumulate=False,    # IWDiff: one draw's gradient at a time (memory flat in k)
      iwdiff_weights="sum",       # IWDiff softmax over: sum (Algorithm 3 line 6) | mean (ablation)
      timestep_sampler="uniform", # uniform | loss_aware (p_t ∝ sqrt(E[L_t^2]), needs full depth)
      extra_updates=0,            # loss_aware: forward-only history updates per step (paper: 2)
      crop_mel_frames=0,          # vocoder: random crops of this many mel frames (0: whole clips)
      p_uncond=0.0,               # class-conditional: probability a label is dropped to "none"
                                  # (classifier-free guidance trains both; Ho & Salimans: 0.1-0.2)
  ))
  config.sampling = ml_collections.ConfigDict(dict(
      batch_size=64, num_samples=64,
      name="ancestral",     # a sampler of jdiff/samplers.py: ancestral | respaced | ddim | fastdpm |
                            # dpm_solver_pp | dpm_solver | unipc
      clip_x0="auto",       # auto: as the sampler's reference code (ancestral/respaced clip x0 to
                            # [-1, 1], ddim/fastdpm do not) | on | off
      steps=50,             # all but ancestral: network evaluations per sample
      respacing="even",     # respaced: even (K evenly spaced) | ddim (one stride) | "10,10,10"
                            # (improved-diffusion's counts per equal section; steps = their sum)
      schedule="auto",      # auto (ddim: uniform; fastdpm: quadratic; solvers: time_uniform) |
                            # ddim, fastdpm step: uniform (range(0, T, T//S)) | linear
                            # (floor(i (T-1)/(S-1))) | quadratic; fastdpm var: linear | quadratic;
                            # solvers: time_uniform | logsnr | time_quadratic (the official codes)
                            # | linspace | leading | trailing (diffusers' schedulers, step for step)
      eta=0.0,              # ddim: 0 deterministic, 1 DDPM-like
      kappa=1.0,            # fastdpm: 1 DDPM-rev (FastDPM's default), 0 DDIM-rev
      fastdpm_kind="step",  # var | step
      var_domain="reference",  # fastdpm var: reference (FastDPM's search domain; its quadratic
                               # levels at S <= 20 end above abar_T) | full (products always match)
      order=2,              # solvers: 1 | 2 (DPM-Solver++ 2M) | 3 (3M); UniPC: UniPC-p
      lower_order_final=True,  # solvers: lower orders at the last steps, as the references do
      unipc_variant="bh1",  # unipc: bh1 (B(h) = h, the official default) | bh2 (expm1(h), diffusers')
      guidance=0.0,         # class-conditional: classifier-free guidance w, eps = (1 + w)
                            # eps(x, c) - w eps(x) (0: the conditional model alone)
      class_label=-1,       # class-conditional: -1 every class in turn (the grid: one row per
                            # class) | the one class to sample
      mel_split="train",    # mel-conditioned DiffWave (diffwave.n_mels > 0): sample i is
                            # conditioned on the mel of clip i of config.data at this split
  ))
  # Surrogate diffusion (Algorithm 4): start the reverse process at t_mid from a cheaper model.
  config.surrogate = ml_collections.ConfigDict(dict(
      kind="none",          # none | sngan | ddpm (a low-resolution jdiff DDPM, upsampled)
      config="",            # the surrogate's config file (configs/*.py)
      workdir="",           # where it was trained
      t_mid=500,            # 1-based step the reverse process starts from (T: no surrogate)
      t_mids=(0, 250, 500, 750),  # the bench's sweep
  ))
  # DiffWave (model.kind = 'diffwave', jdiff/models/diffwave.py): Kong et al.'s SC09 model.
  config.diffwave = ml_collections.ConfigDict(dict(
      residual_channels=256, skip_channels=256, num_layers=36, dilation_cycle=12,
      embed_dims=(128, 512, 512),  # sinusoidal step embedding -> fc_t1 -> fc_t2
      weight_norm=True,            # weight-normalised convs, as the reference code
      n_mels=0,                    # 0: unconditional (mel conditioning: the vocoder)
      mel_hop=256,                 # vocoder STFT hop = the upsampler's factor (s * s, s even)
      mel_n_fft=1024,              # vocoder STFT window (lmnt-com/diffwave: 1024 at 22.05 kHz)
  ))
  # SNGAN (model.kind = 'sngan'): ResNet generator, spectrally normalised discriminator, hinge loss.
  config.gan = ml_collections.ConfigDict(dict(
      z_dim=128, g_ch=128, d_ch=128, n_dis=5, learning_rate=2e-4, beta1=0.0, beta2=0.9,
  ))
  # --mode=evaluate (samples under <workdir>/eval/<name>/step_<checkpoint step>/, kept on restart).
  config.evaluation = ml_collections.ConfigDict(dict(
      name="",                 # subfolder of <workdir>/eval; "" = the sampler, e.g. "ddim50"
      num_samples=50_000,      # samples generated (and scored) per evaluation
      metrics=choices.DEFAULT_EVALUATION_METRICS,  # fid | is | kid (FID Inception-v3) | digits_fd
                               # | bpd; the default drops "is" for weights without logits
      reference_stats="",      # FID mu/sigma .npz (pytorch-fid / TTUR format); "" = computed from
                               # config.data at reference_split, cached
      reference_split="train",
      inception_weights="",    # pytorch-fid .pth; "" = downloaded once and cached
      fid_preprocessing="tf1",  # tf1 (TTUR / TF-GAN: the papers' FIDs) | pytorch_fid
      feature_batch_size=200,  # Inception / classifier batch (rounded up to the device count)
      is_splits=10,
      kid_subsets=100,
      kid_subset_size=1000,
      bpd_examples=10_000,     # bits/dim on the first N images of bpd_split (0 = all)
      bpd_split="test",
      sc09_reference="",       # sc09_fd: labelled SC09 clips (folder / .tar.gz with zero..nine
                               # folders); "" = data.path (data.source='folder')
  ))
  config.bench = ml_collections.ConfigDict(dict(
      kind="core",        # core | depth | samplers | precision (fp32/bf16 x remat: speed, memory)
      batch_sizes=(1, 8, 32),
      num_iters=5,
      sampler_steps=0,    # 0: time the full T-step sampler; else only its first N steps
      samplers=(),        # samplers bench: families to run (() = all; DDPM always, as baseline)
      quality_samples=0,  # samplers bench on digits: samples per row for the digits FD (0: none)
      skip_types=(),      # depth bench: skip types whose sampling it times (() = all three)
      depth_parts=("training", "sampling"),  # depth bench: what it times
  ))
  return config


def load_config(spec: str) -> ml_collections.ConfigDict:
  """get_config(variant) of "path/to/config.py[:variant]", as --config=... loads it, validated.

  Notebooks, tools and tests load configs through this (configs/ is not a package).
  """
  path, _, variant = spec.partition(":")
  try:
    module_spec = importlib.util.spec_from_file_location(
        os.path.splitext(os.path.basename(path))[0], os.path.abspath(path))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (a config file can raise anything)
    raise ConfigError(f"{spec}: cannot load it ({type(e).__name__}: {e})") from None
  validate(config)
  return config


VARIANTS = ("", "tiny")


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """The config's `variant` (configs/*.py:get_config(variant)); "tiny" shrinks the model, the
  diffusion and the run so that a train step compiles and runs in seconds on a CPU (tests,
  notebooks in CI, trying a config out); the data stay the config's."""
  if variant not in VARIANTS:
    raise ConfigError(f"config variant {variant!r}: must be one of {list(VARIANTS)}")
  if variant == "tiny":
    config.model.update(dict(preset="", ch=8, ch_mult=(1, 2), attn_resolutions=(4,),
                              num_groups=4))
    config.gan.update(dict(z_dim=16, g_ch=16, d_ch=16))
    scale = 20 / config.diffusion.num_timesteps  # surrogate steps keep their place in the chain
    config.diffusion.num_timesteps = 20
    config.training.update(dict(batch_size=8, num_steps=6, warmup_steps=2, log_every=2,
                                checkpoint_every=3))
    config.sampling.update(dict(batch_size=4, num_samples=4, steps=min(config.sampling.steps, 10)))
    config.surrogate.update(dict(t_mid=round(config.surrogate.t_mid * scale),
                                 t_mids=tuple(round(t * scale) for t in config.surrogate.t_mids)))
    config.evaluation.update(dict(num_samples=8, bpd_examples=8, feature_batch_size=8,
                                  kid_subset_size=4, kid_subsets=2, is_splits=2))
    config.bench.update(dict(batch_sizes=(2,), num_iters=1))
  return config
