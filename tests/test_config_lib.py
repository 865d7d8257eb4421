"""jdiff.config_lib: loading by path with a variant, validation that changes nothing, and error
messages that name fields which exist."""

import glob
import os
import re

import pytest

from conftest import REPO, TINY
from jdiff import config_lib
from jdiff import errors


def _fields(config) -> set:
  return set(config_lib.flatten(config.to_dict()))


def test_load_config_with_variant_and_errors(tmp_path):
  full = config_lib.load_config(os.path.join(REPO, "configs", "quickstart.py"))
  tiny = config_lib.load_config(TINY)
  assert full.model.ch == 32 and tiny.model.ch == 8 and tiny.diffusion.num_timesteps == 20
  assert _fields(full) == _fields(tiny) == _fields(config_lib.default_config())
  with pytest.raises(errors.ConfigError, match=r"quickstart.py:huge: cannot load it \(ConfigError"):
    config_lib.load_config(os.path.join(REPO, "configs", "quickstart.py") + ":huge")
  with pytest.raises(errors.ConfigError, match="cannot load it"):
    config_lib.load_config(str(tmp_path / "absent.py"))


def test_validate_does_not_change_the_config_and_presets_resolve_in_a_copy():
  config = config_lib.load_config(os.path.join(REPO, "configs", "cifar10_arch.py") + ":MBConv64")
  before = config.to_dict()
  config_lib.validate(config)
  assert config.to_dict() == before
  assert config.model.block_type == "res" and config.model.ch == 128  # as written
  resolved = config_lib.resolved_model_config(config)
  assert resolved.block_type == "mbconv" and resolved.ch == 64       # as built
  identity = config_lib.checkpoint_identity(config, "train")
  assert identity["model.block_type"] == "mbconv" and identity["model.ch"] == 64


def test_every_field_named_in_an_error_message_exists():
  """`config.<section>.<field>` in any string of jdiff/ must be a field of the default config."""
  fields = _fields(config_lib.default_config())
  named = set()
  for path in glob.glob(os.path.join(REPO, "jdiff", "**", "*.py"), recursive=True):
    text = open(path).read()
    for string in re.findall(r"f?\"[^\"\n]*\"|f?'[^'\n]*'", text):
      named.update((path, field) for field in re.findall(
          r"(?<![\w.])config\.([a-z_]+\.[a-z_]+)(?![\w(])", string))
  missing = sorted(f"{os.path.relpath(path, REPO)}: config.{field}" for path, field in named
                   if field not in fields)
  assert not missing, "\n".join(missing)
  assert len(named) > 20  # the scan does find the messages


def test_unknown_variant_is_one_line():
  config = config_lib.default_config()
  with pytest.raises(errors.ConfigError, match=r"config variant 'huge': must be one of \['', 'tiny'\]"):
    config_lib.apply_variant(config, "huge")


def test_comma_joined_list_fields_are_split_and_strings_are_not():
  config = config_lib.default_config()
  config.evaluation.metrics = ("fid, kid",)     # what --config.evaluation.metrics=fid,kid gives
  config.bench.samplers = ("ddim,fastdpm",)
  config.data.path = "/data/a,b.npz"           # a string field: a comma is part of the value
  assert config_lib.split_comma_lists(config) is config
  assert config.evaluation.metrics == ("fid", "kid")
  assert config.bench.samplers == ("ddim", "fastdpm")
  assert config.data.path == "/data/a,b.npz"
  config_lib.validate(config)
  config.evaluation.metrics = ("fid,bogus",)
  with pytest.raises(errors.ConfigError, match=r"evaluation.metrics=\('fid', 'bogus'\)"):
    config_lib.validate(config_lib.split_comma_lists(config))
