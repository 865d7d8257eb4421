"""Every configs/*.py with each of its variants loads, validates and builds, as
`python -m jdiff.main --config=FILE[:VARIANT] --mode=summary` does: the model's parameters are
counted from shapes alone (jax.eval_shape: nothing compiles or runs), and no data is read.

A config file's variants are config_lib.VARIANTS ("" and "tiny", through apply_variant) unless
VARIANTS_OF lists them. A file added to configs/ is picked up without changes here; one whose
get_config takes other arguments needs its entry in VARIANTS_OF (an entry whose file is gone is
ignored).
"""

import glob
import importlib.util
import json
import os
import socket

import jax
import pytest
from clu import parameter_overview

from conftest import REPO
from jdiff import builders, config_lib, data
from jdiff.models import presets

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def _config_module(name):
  """configs/NAME as a module (configs/ is not a package), for the variants it documents."""
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPO, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _ddpm_256_variants():
  datasets = tuple(_config_module("ddpm_256.py").DATASETS)  # celebahq (default), church, ...
  return ("",) + datasets + ("tiny", f"{datasets[-1]},tiny")


VARIANTS_OF = {
    # get_config(preset): "Default" when no argument, any Table 4.3 preset, or "tiny".
    "cifar10_arch.py": lambda: ("",) + tuple(name for name in presets.PRESETS if name != "Default")
                               + ("tiny",),
    # A comma list: "ddpm16" picks the DDPM-16 surrogate; the rest goes to apply_variant.
    "cifar10_surrogate.py": lambda: ("", "tiny", "ddpm16", "ddpm16,tiny"),
    # A comma list: a data set of DATASETS, and "tiny".
    "ddpm_256.py": _ddpm_256_variants,
}

# The counts that the configs' docstrings state (`--mode=summary` prints `parameters: N`).
DOCUMENTED_PARAMETERS = {
    ("cifar10_ddpm.py", ""): 35_746_307,
    ("cifar10_classcond.py", ""): 35_751_939,  # and an 11 x 512 label embedding
    ("sc09_diffwave.py", ""): 24_071_681,
    ("ddpm_256.py", "church"): 113_673_219,
}

# Parameter counts by what a checkpoint's parameters depend on (config_lib.checkpoint_identity):
# variants that differ only in data, steps or sampling build the same network, traced once.
_COUNTS = {}


def _cases():
  for path in CONFIGS:
    name = os.path.basename(path)
    variants = VARIANTS_OF[name]() if name in VARIANTS_OF else config_lib.VARIANTS
    for variant in variants:
      yield pytest.param(path, variant, id=f"{name}:{variant}" if variant else name)


@pytest.fixture
def offline(monkeypatch):
  """Loading, validating and building a config reads no data and opens no connection."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"a config touched data or the network ({args!r:.200})")
  monkeypatch.setattr(data, "load_images", refuse)
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("path, variant", _cases())
@pytest.mark.usefixtures("offline")
def test_config_loads_validates_and_builds(path, variant):
  spec = f"{path}:{variant}" if variant else path
  config = config_lib.load_config(spec)
  config_lib.validate(config_lib.split_comma_lists(config))  # as jdiff.main does with flags
  model = builders.build_model(config)
  key = json.dumps(config_lib.checkpoint_identity(config, "sample"), sort_keys=True, default=str)
  if key not in _COUNTS:
    params = jax.eval_shape(lambda: builders.init_params(model, config, jax.random.key(0)))
    _COUNTS[key] = parameter_overview.count_parameters(params)
  count = _COUNTS[key]
  assert count > 0
  expected = DOCUMENTED_PARAMETERS.get((os.path.basename(path), variant))
  if expected is not None:
    assert count == expected, f"{spec}: {count:,} parameters; its docstring says {expected:,}"
  if variant == "tiny":
    assert config.training.num_steps <= 10, f"{spec}: the tiny variant should train in seconds"
  # No default points outside the repository (a machine's own folders): data a user can get
  # (TFDS, sklearn, downloads), or a path relative to the working directory for the user to fill.
  for field in ("data.path", "evaluation.inception_weights", "evaluation.reference_stats",
                "evaluation.sc09_reference"):
    value = config_lib.get_field(config, field)
    assert not os.path.isabs(value) and ".." not in value.split("/"), f"{spec}: {field}={value!r}"
