"""Config validation: every value is checked before anything is compiled.

A bad value raises ConfigError whose message is one line: the field, the value, what is
allowed. `main` prints it and exits 2.
"""

from typing import Any, Callable, Sequence, Tuple

import ml_collections

from jdiff import depth as depth_lib
from jdiff import diffusion as diffusion_lib
from jdiff import schedules
from jdiff.models import unet

DATA_SOURCES = ("digits", "cifar10", "mnist", "fashion_mnist", "celeb_a", "folder", "npz", "idx")
MODES = ("train", "sample", "summary", "bench")


class ConfigError(ValueError):
  pass


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
NON_NEGATIVE_INT = (non_negative_int, "an integer >= 0")
BOOL = ((lambda value: isinstance(value, bool)), "true or false")
POSITIVE_INTS = ((lambda value: isinstance(value, (tuple, list)) and len(value) > 0
                  and all(positive_int(v) for v in value)), "a non-empty list of positive integers")
INTS = ((lambda value: isinstance(value, (tuple, list)) and all(positive_int(v) for v in value)),
        "a list of positive integers")

# (field, (check, what is allowed)); each later module adds its fields here.
RULES: Sequence[Tuple[str, Tuple[Callable[[Any], bool], str]]] = (
    ("seed", NON_NEGATIVE_INT),
    ("data.source", one_of(*DATA_SOURCES)),
    ("data.image_size", POSITIVE_INT),
    ("data.num_channels", one_of(1, 3)),
    ("data.random_flip", BOOL),
    ("model.ch", POSITIVE_INT),
    ("model.ch_mult", POSITIVE_INTS),
    ("model.num_res_blocks", POSITIVE_INT),
    ("model.attn_resolutions", INTS),
    ("model.dropout", in_range(0.0, 1.0, high_open=True)),
    ("model.num_groups", POSITIVE_INT),
    ("model.skip_type", one_of(*unet.SKIP_TYPES)),
    ("model.remat", BOOL),
    ("model.dtype", one_of("float32", "bfloat16")),
    ("diffusion.num_timesteps", POSITIVE_INT),
    ("diffusion.beta_schedule", one_of(*schedules.BETA_SCHEDULES)),
    ("diffusion.beta_start", in_range(0.0, 1.0, low_open=True, high_open=True)),
    ("diffusion.beta_end", in_range(0.0, 1.0, low_open=True, high_open=True)),
    ("diffusion.variance_type", one_of(*diffusion_lib.VARIANCE_TYPES)),
    ("depth.training", one_of(*depth_lib.TRAINING_SCHEMES)),
    ("depth.power", in_range(0.0, float("inf"))),
    ("training.batch_size", POSITIVE_INT),
    ("training.num_steps", POSITIVE_INT),
    ("training.learning_rate", in_range(0.0, 1.0, low_open=True)),
    ("training.warmup_steps", NON_NEGATIVE_INT),
    ("training.grad_clip", in_range(0.0, float("inf"))),
    ("training.ema_decay", in_range(0.0, 1.0, high_open=True)),
    ("training.log_every", POSITIVE_INT),
    ("training.checkpoint_every", POSITIVE_INT),
    ("training.keep_checkpoints", POSITIVE_INT),
    ("sampling.batch_size", POSITIVE_INT),
    ("sampling.num_samples", POSITIVE_INT),
    ("sampling.clip_denoised", BOOL),
    ("bench.batch_sizes", POSITIVE_INTS),
    ("bench.num_iters", POSITIVE_INT),
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


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad field."""
  for field, (check, allowed) in RULES:
    _check(check(get_field(config, field)), field, get_field(config, field), allowed)
  # Relations between fields.
  model, data = config.model, config.data
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


def default_config() -> ml_collections.ConfigDict:
  """Every field with its default (Ho et al.'s CIFAR-10 setup); configs/*.py override it."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.distributed = False  # jax.distributed.initialize() (multi-host launches set it)

  config.data = ml_collections.ConfigDict(dict(
      source="cifar10",   # a TFDS name, "digits" (sklearn), or a local "folder" / "npz" / "idx"
      path="",            # local sources: the folder or file
      data_dir="",        # TFDS data_dir ("" = TFDS default)
      split="train",
      image_size=32,
      num_channels=3,
      random_flip=True,
  ))
  config.model = ml_collections.ConfigDict(dict(
      ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
      num_groups=32, skip_type="zero", remat=False, dtype="float32",
  ))
  config.diffusion = ml_collections.ConfigDict(dict(
      num_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
      variance_type="fixedlarge",
  ))
  config.depth = ml_collections.ConfigDict(dict(
      training="full",  # full | random | bucketed
      power=0.0,        # c of k(t) = min(N-1, floor(N - N (1 - t)^c)) used by samplers/bucketing
  ))
  config.training = ml_collections.ConfigDict(dict(
      batch_size=128, num_steps=800_000, learning_rate=2e-4, warmup_steps=5000, grad_clip=1.0,
      ema_decay=0.9999, log_every=100, checkpoint_every=5000, keep_checkpoints=3,
  ))
  config.sampling = ml_collections.ConfigDict(dict(
      batch_size=64, num_samples=64, clip_denoised=True,
  ))
  config.bench = ml_collections.ConfigDict(dict(batch_sizes=(1, 8, 32), num_iters=5))
  return config
