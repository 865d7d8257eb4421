"""jdiff/compute.py: what GPU and TPU run is plain jax.jit, flax and optax; the CPU's tuning lives
in jdiff/cpu only, and the library never asks which backend it is on."""

import ast
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from conftest import REPO, tiny_config
from jdiff import builders
from jdiff import objectives
from jdiff import compute
from jdiff import parallel
from jdiff.drivers import train as train_lib


def _plain_flax_optax_step(config, model):
  """A train step written with jax, flax and optax alone around jdiff's objective (L_simple of
  objectives, the method itself): model.apply with its default convolution, optax's own
  global-norm clipping and Adam with warmup, optax's EMA update, a step with a non-finite loss or
  gradient skipped whole (lax.cond), plain jax.jit. It draws its randoms from the step's key in
  the order train.make_train_step documents."""
  training, num_timesteps = config.training, config.diffusion.num_timesteps
  diffusion = builders.build_diffusion(config)
  warmup = training.warmup_steps
  optimizer = optax.chain(
      optax.clip_by_global_norm(training.grad_clip),
      optax.adam(optax.linear_schedule(training.learning_rate / warmup, training.learning_rate,
                                       warmup - 1)))

  def step(state, images):
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
    _, time_rng, draw_rng = jax.random.split(rng, 3)
    t = jax.random.randint(jax.random.split(time_rng)[1], (images.shape[0],), 0, num_timesteps)
    noise_rng, dropout_rng = jax.random.split(draw_rng)
    x_start = images.astype(jnp.float32) / 127.5 - 1.0
    noises = jax.random.normal(noise_rng, (1,) + x_start.shape)
    dropout_keys = jax.random.split(dropout_rng, 1)

    def draw_loss_fn(params, noise, dropout_key):
      model_fn = lambda x, t: model.apply({"params": params}, x, t, train=True,
                                          rngs={"dropout": dropout_key})
      return objectives.example_losses("simple", diffusion, model_fn, x_start, t, noise,
                                       "fixedlarge")
    loss, grads, _ = objectives.objective_value_and_grad(
        draw_loss_fn, state.params, noises, dropout_keys, jnp.ones(t.shape))

    def update(state):
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      decay = jnp.minimum(training.ema_decay, (1.0 + state.step) / (10.0 + state.step))
      ema_params = optax.incremental_update(params, state.ema_params, step_size=1.0 - decay)
      return state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                           opt_state=opt_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    return jax.lax.cond(finite, update, lambda state: state, state), loss
  return jax.jit(step)


def test_the_accelerator_path_is_a_plain_flax_optax_train_step_bit_for_bit():
  """compute.Compute (what every backend but the CPU gets), run here on the CPU: jdiff's train
  step gives bitwise the parameters, EMA, optimizer state and loss of the plain step."""
  config = tiny_config()
  config.data.random_flip = False
  config.training.ema_warmup, config.training.warmup_steps, config.model.dropout = True, 10, 0.1
  config.training.grad_clip = 0.05  # clipping at work in some steps
  assert (config.training.loss, config.depth.training, config.diffusion.beta_schedule,
          config.diffusion.variance_type) == ("simple", "full", "linear", "fixedlarge")
  mesh = parallel.make_mesh()
  model, state, train_step = train_lib.build_fresh_training(config, mesh, compute.Compute())
  plain_step = _plain_flax_optax_step(config, model)
  theirs = jax.tree.map(jnp.copy, state)  # jdiff's step donates its state
  rng = np.random.default_rng(0)
  for _ in range(3):
    images = rng.integers(0, 256, (config.training.batch_size,) + builders.image_shape(config),
                          dtype=np.uint8)
    state, metrics = train_step(state, parallel.global_batch_from_local(images, mesh))
    theirs, loss = plain_step(theirs, jnp.asarray(images))
    assert float(metrics["loss"]) == float(loss)
    for name in ("params", "ema_params", "opt_state"):
      for ours, plain in zip(jax.tree.leaves(getattr(state, name)),
                             jax.tree.leaves(getattr(theirs, name))):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(plain), err_msg=name)
  # The state moved: a step that did nothing would pass the comparison too.
  assert int(state.step) == 3
  fresh = builders.new_params(model, config, config.seed)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh),
                                                       jax.tree.leaves(state.params)))


# What may not appear in the backend-neutral library: backend names, the CPU's options, and the
# ways of asking for either. Checked on the code (names, attributes, strings, arguments), not on
# comments or docstrings, which cite CPU measurements.
_NEUTRAL_FILES = ("jdiff/models/", "jdiff/drivers/", "jdiff/objectives.py", "jdiff/sampling.py",
                  "jdiff/builders.py", "jdiff/depth.py", "jdiff/diffusion.py", "jdiff/data.py",
                  "jdiff/surrogate.py", "jdiff/checkpoint.py", "jdiff/parallel.py")
_FORBIDDEN = re.compile(
    r"\b(cpu|gpu|tpu|cuda|rocm|libtpu|default_backend|backend|platform|platforms|jax_platforms|"
    r"winograd|eigen|ynn|ynnpack|mallopt|host_memory|filter_grad|conv_filter_grad|"
    r"compiler_options|xla_cpu_\w*|cpu_kernels|cpu_convolutions)\b", re.IGNORECASE)


def _code_words(source: str):
  """(line, text) of every name, attribute, argument, keyword and string constant of the module
  that is not a docstring."""
  tree = ast.parse(source)
  docstrings = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      if node.body and isinstance(node.body[0], ast.Expr) and isinstance(
          node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str):
        docstrings.add(id(node.body[0].value))
  for node in ast.walk(tree):
    if isinstance(node, ast.Name):
      yield node.lineno, node.id
    elif isinstance(node, ast.Attribute):
      yield node.lineno, node.attr
    elif isinstance(node, ast.arg):
      yield node.lineno, node.arg
    elif isinstance(node, ast.keyword) and node.arg:
      yield node.lineno, node.arg
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      for alias in node.names:
        yield node.lineno, f"{getattr(node, 'module', '') or ''}.{alias.name}"
    elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
          and id(node) not in docstrings):
      yield node.lineno, node.value


def _neutral_sources():
  for entry in _NEUTRAL_FILES:
    path = os.path.join(REPO, entry)
    if entry.endswith("/"):
      for name in sorted(os.listdir(path)):
        if name.endswith(".py"):
          yield os.path.join(entry, name), os.path.join(path, name)
    else:
      yield entry, path


def test_no_backend_name_or_cpu_option_in_the_backend_neutral_library():
  found = []
  for entry, path in _neutral_sources():
    with open(path, encoding="utf-8") as f:
      for line, word in _code_words(f.read()):
        if _FORBIDDEN.search(str(word)):
          found.append(f"{entry}:{line}: {word!r}")
  assert not found, "backend names or CPU options in the neutral library:\n" + "\n".join(found)


def test_the_scan_finds_what_it_forbids():
  """The check above fails on the code it is meant to catch (and not on comments)."""
  caught = [word for _, word in _code_words(
      "import jax\n"
      "from jdiff import cpu_kernels\n"
      "# measured on 2 CPU cores\n"
      "def f(x, conv_filter_grad='auto'):\n"
      "  '''Runs on any backend.'''\n"
      "  if jax.default_backend() == 'cpu':\n"
      "    return jax.local_devices(backend='cpu')\n")
      if _FORBIDDEN.search(str(word))]
  assert sorted(caught) == sorted(["jdiff.cpu_kernels", "conv_filter_grad", "default_backend",
                                   "cpu", "backend", "cpu"])
