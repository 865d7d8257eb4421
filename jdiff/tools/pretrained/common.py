"""What every format's converter shares: strict weight mapping, the jdiff config file, the checkpoint.

A converter turns a foreign checkpoint into (a jdiff config, {jdiff param path: array}). It reads
the foreign weights through `Source`, which remembers what was taken: `finish` refuses a
conversion that leaves a foreign weight unused, or a jdiff weight unset, or sets one with the
wrong shape (CheckpointMismatchError, naming the weights), so nothing is ever loaded partially.
`write_workdir` then writes <workdir>/config.py (usable as --config) and a checkpoint in the
layout the trainer writes (items state / ema_params / config, jdiff/checkpoint.py), so every mode
(sample, evaluate, bench, likelihood, and training on from there) uses it unchanged.
"""

import os
import pprint
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from jdiff import builders
from jdiff import checkpoint as checkpoint_lib
from jdiff import config_lib
from jdiff import parallel
from jdiff.errors import CheckpointMismatchError, ConfigError

MAX_NAMED = 6  # weights named in one error line


def name_list(names: Iterable[str]) -> str:
  """The first MAX_NAMED names, sorted, and how many more."""
  names = sorted(names)
  shown = ", ".join(names[:MAX_NAMED])
  return shown + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


def refuse(field: str, value, allowed: str, what: str = "") -> None:
  """One-line ConfigError for a source config value that the jdiff model cannot express."""
  raise ConfigError(f"{what or 'source config'} {field}={value!r}: jdiff's model cannot express "
                    f"it (supported: {allowed})")


class Source:
  """A foreign state dict {name: array} that records which names a converter took."""

  def __init__(self, arrays: Mapping[str, np.ndarray], where: str,
               ignored: Callable[[str], bool] = lambda name: False):
    self.arrays = dict(arrays)
    self.where = where
    self.ignored = ignored  # names that are no weights of the model (optimizer slots, counters)
    self.taken = set()

  def __contains__(self, name: str) -> bool:
    return name in self.arrays

  def take(self, name: str) -> np.ndarray:
    if name not in self.arrays:
      raise CheckpointMismatchError(f"{self.where}: weight {name!r} is missing (the layout does not "
                                    "match the model its config describes)")
    self.taken.add(name)
    return np.asarray(self.arrays[name])

  def unused(self):
    return [name for name in self.arrays if name not in self.taken and not self.ignored(name)]


def abstract_params(config, model=None) -> Dict[Tuple[str, ...], jax.ShapeDtypeStruct]:
  """{param path: shape/dtype} of the config's jdiff model (or `model`; no compute)."""
  model = model or builders.build_model(config)
  shapes = jax.eval_shape(lambda: builders.init_params(model, config, jax.random.key(0)))
  return traverse_util.flatten_dict(shapes)


def finish(config, params: Mapping[Tuple[str, ...], np.ndarray], source: Optional[Source],
           model=None):
  """The nested jdiff params, after checking that the conversion is total both ways (for
  `model`, default the config's)."""
  if source is not None and source.unused():
    raise CheckpointMismatchError(
        f"{source.where}: {len(source.unused())} weights that the jdiff model has no place for "
        f"(a layout this converter does not know, or a config that does not match the weights): "
        f"{name_list(source.unused())}")
  expected = abstract_params(config, model)
  missing = [("/".join(path)) for path in expected if path not in params]
  if missing:
    raise CheckpointMismatchError(f"the conversion leaves {len(missing)} jdiff weights unset: "
                                  f"{name_list(missing)}")
  extra = [("/".join(path)) for path in params if path not in expected]
  if extra:
    raise CheckpointMismatchError(f"the conversion made {len(extra)} weights the jdiff model does "
                                  f"not have: {name_list(extra)}")
  wrong = [f"{'/'.join(path)} {tuple(np.shape(params[path]))} (jdiff: {tuple(spec.shape)})"
           for path, spec in expected.items() if tuple(np.shape(params[path])) != tuple(spec.shape)]
  if wrong:
    raise CheckpointMismatchError(f"{len(wrong)} weights have the wrong shape: {name_list(wrong)}")
  return traverse_util.unflatten_dict(
      {path: np.asarray(value, np.float32) for path, value in params.items()})


# ------------------------------------------------------------------------------------------------
# The config file


def _changed(value, default) -> bool:
  if isinstance(value, (tuple, list)) and isinstance(default, (tuple, list)):
    return list(value) != list(default)
  return value != default or type(value) is not type(default)


def config_overrides(config) -> Dict[str, object]:
  """{dotted field: value} where config differs from config_lib.default_config()."""
  current = config_lib.flatten(config.to_dict())
  default = config_lib.flatten(config_lib.default_config().to_dict())
  return {field: value for field, value in current.items()
          if field not in default or _changed(value, default[field])}


def config_file_text(config, header: str) -> str:
  """A configs/*.py-style file whose get_config() returns `config`."""
  header = header.strip().replace("\\", "/").replace('"' * 3, "'" * 3)  # a plain docstring
  lines = ['"""' + header + '\n"""', "", "from jdiff import config_lib", "", "",
           'def get_config(variant: str = ""):', "  config = config_lib.default_config()"]
  for field, value in config_overrides(config).items():
    if isinstance(value, list):
      value = tuple(value)
    lines.append(f"  config.{field} = {pprint.pformat(value, width=80)}")
  lines.append("  return config_lib.apply_variant(config, variant)")
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# The workdir


def write_workdir(workdir: str, config, ema_params, params=None, step: int = 0,
                  header: str = "") -> str:
  """Writes <workdir>/config.py and the checkpoint at `step`; returns the config file's path.

  ema_params: what sampling and evaluation use; params: what training would resume from
  (a source with only one set of weights gives the same for both)."""
  config_lib.validate(config)
  checkpoints = os.path.join(workdir, "checkpoints")
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    raise ConfigError(f"--workdir={workdir} already holds checkpoints: import into a new workdir")
  os.makedirs(workdir, exist_ok=True)
  config_path = os.path.join(workdir, "config.py")
  text = config_file_text(config, header)
  loaded = _load_config_text(text, config_path)
  if config_lib.checkpoint_identity(loaded, "train") != config_lib.checkpoint_identity(config, "train"):
    raise AssertionError("the written config file does not reproduce the config")
  with open(config_path, "w") as f:
    f.write(text)

  mesh = parallel.make_mesh()
  sharding = parallel.replicated(mesh)
  put = lambda tree: jax.tree.map(lambda x: jax.device_put(jnp.asarray(x, jnp.float32), sharding),
                                  tree)
  ema_params = put(ema_params)
  params = ema_params if params is None else put(params)
  optimizer = builders.build_optimizer(config.training)
  state = builders.TrainState(step=jnp.int32(step), params=params, ema_params=ema_params,
                              opt_state=jax.jit(optimizer.init)(params),
                              loss_history=builders.init_loss_history(config))
  record = checkpoint_lib.identity_record(config.to_dict(),
                                          config_lib.checkpoint_identity(config, "train"))
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.training.keep_checkpoints)
  try:
    checkpointer.save(step, builders.checkpoint_items(state), record)
  finally:
    checkpointer.close()
  return config_path


def _load_config_text(text: str, path: str):
  namespace = {"__name__": "imported_config", "__file__": path}
  exec(compile(text, path, "exec"), namespace)  # pylint: disable=exec-used
  config = namespace["get_config"]()
  config_lib.validate(config)
  return config


def load_ema_params(config, workdir: str):
  """(EMA params as a nested dict of numpy arrays, step) of the workdir's latest checkpoint."""
  model = builders.build_model(config)
  params, step = builders.restore_ema_params(config, workdir, model, parallel.make_mesh())
  return jax.tree.map(np.asarray, params), step


def new_config() -> ml_collections.ConfigDict:
  return config_lib.default_config()


def guess_data(config) -> None:
  """The data section of an imported model: CIFAR-10 for a 32x32 RGB model (what every published
  one of that size was trained on), else a folder of images the user names (data.path: only
  training and FID reference statistics read it; --config.evaluation.reference_stats=<npz>
  skips it)."""
  if (config.data.image_size, config.data.num_channels) != (32, 3):
    config.data.update(dict(source="folder", path="path/to/training/images"))
