"""What a model is told besides (x_t, t): one `cond` pytree from the data to every sampler.

`cond` is a dict of arrays with one row per example; its keys are the model's keyword arguments
(the U-Net's `label`, DiffWave's `mel`), and `{}` is an unconditional model. It flows unchanged
through the train step, the objectives (builders.make_model_fn(..., cond=)), every sampler
(the model function closes over it, so plans, multistep solvers, adaptive depth and surrogate
starts see a plain model_fn(x, t, depth)), the benches and evaluation.

A conditioning kind is one `Kind` registered in KINDS:

  train_cond(config, x_start, data_cond, rng)  the cond of a training batch: x_start [B, ...]
                                               floats, data_cond what the data source gave
                                               (e.g. {"label": [B]}), rng for random choices;
  sampling_cond(config, num_samples)           numpy cond of the samples to draw, in order;
  null(config, cond)                           the "no condition" cond that classifier-free
                                               guidance's unconditional half sees (None: the
                                               kind has none);
  crop(config, rng, x_start, cond)             (x, cond) of the training crops, where the kind
                                               crops (DiffWave's crop_mel_frames).

Kinds: "none"; "class" (model.num_classes > 0: labels from the data, dropped to the null label
num_classes with probability training.p_uncond; sampled one row of sampling.num_samples /
num_classes per class); "mel" (a mel-conditioned DiffWave: its clean clip's mel, computed in
the train step; at sampling the mels of sampling.mel_split's clips).

Classifier-free guidance (Ho & Salimans 2021, eq. 6): eps~ = (1 + w) eps(x_t, c) - w eps(x_t),
with w = sampling.guidance; `guided` evaluates both halves in one batched forward.
"""

import dataclasses
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import audio
from jdiff import data as data_lib
from jdiff import diffusion as diffusion_lib


@dataclasses.dataclass(frozen=True)
class Kind:
  train_cond: Callable[..., Dict[str, Any]]
  sampling_cond: Callable[..., Dict[str, np.ndarray]]
  null: Optional[Callable[..., Dict[str, Any]]] = None
  crop: Optional[Callable] = None


def kind_of(config) -> str:
  """The config's conditioning kind: 'class', 'mel' or 'none'."""
  if config.model.kind == "diffwave" and config.diffwave.n_mels > 0:
    return "mel"
  if config.model.get("num_classes", 0) > 0:
    return "class"
  return "none"


# ------------------------------------------------------------------------------------------------
# none


def _no_cond(config, *args, **kwargs):
  del config, args, kwargs
  return {}


# ------------------------------------------------------------------------------------------------
# class labels


def _class_train_cond(config, x_start, data_cond, rng):
  """The batch's labels, each replaced by the null label with probability training.p_uncond
  (Ho & Salimans 2021, Algorithm 1: the unconditional model is trained by the same network)."""
  del x_start
  labels = jnp.asarray(data_cond["label"], jnp.int32)
  p_uncond = config.training.p_uncond
  if p_uncond > 0:
    drop = jax.random.bernoulli(rng, p_uncond, labels.shape)
    labels = jnp.where(drop, config.model.num_classes, labels)
  return {"label": labels}


def sample_labels(config, num_samples: int) -> np.ndarray:
  """The labels of the samples, in order: sampling.class_label for every sample, or (-1) every
  class in turn, num_samples / num_classes consecutive samples each, so that a grid of
  ceil(num_samples / num_classes) columns shows one row per class."""
  num_classes = config.model.num_classes
  if config.sampling.class_label >= 0:
    return np.full(num_samples, config.sampling.class_label, np.int32)
  per_class = -(-num_samples // num_classes)
  return (np.arange(num_samples) // per_class).astype(np.int32)


def _class_sampling_cond(config, num_samples):
  return {"label": sample_labels(config, num_samples)}


def _class_null(config, cond):
  return dict(cond, label=jnp.full_like(cond["label"], config.model.num_classes))


# ------------------------------------------------------------------------------------------------
# a vocoder's mel


def mel_of(config, waves):
  """[B, L, 1] float waves -> their [B, L / diffwave.mel_hop, diffwave.n_mels] conditioning
  spectrogram.

  The vocoder's STFT (lmnt-com/diffwave params.py; jdiff.audio.mel_spectrogram): periodic Hann
  window of diffwave.mel_n_fft points (the reference: 1024), hop diffwave.mel_hop (256, the
  upsampler's factor), magnitude, Slaney mel filters 20 Hz .. sample_rate / 2, dB scaled to
  [0, 1]; diffwave.n_mels bands (80).
  """
  d = config.diffwave
  return audio.mel_spectrogram(waves, sample_rate=config.data.sample_rate, n_fft=d.mel_n_fft,
                               hop=d.mel_hop, n_mels=d.n_mels)


def _mel_train_cond(config, x_start, data_cond, rng):
  del data_cond, rng
  return {"mel": mel_of(config, x_start)}  # a vocoder hears its clean clip's mel


def conditioning_clips(config, num_samples: int) -> np.ndarray:
  """A vocoder's given clips: the first num_samples of config.data's sampling.mel_split (int16
  [num_samples, L, 1], repeated in order when the split has fewer)."""
  data_config = config.data.copy_and_resolve_references()
  data_config.split = config.sampling.mel_split
  clips = np.asarray(data_lib.load_images(data_config))
  return clips[np.arange(num_samples) % len(clips)]


def _mel_sampling_cond(config, num_samples):
  clips = conditioning_clips(config, num_samples)
  return {"mel": np.asarray(mel_of(config, data_lib.to_float(clips)))}


def _mel_crop(config, rng, waves, cond):
  """A vocoder's training crops (lmnt-com/diffwave's crop_mel_frames, learner.py / dataset.py):
  for each clip, training.crop_mel_frames consecutive frames of its mel (computed on the whole
  clip) from a uniformly drawn start frame f, and the samples under them, [f hop, (f + c) hop).
  [B, L, 1], [B, L / hop, M] -> [B, c hop, 1], [B, c, M]."""
  mel = cond["mel"]
  frames, hop = config.training.crop_mel_frames, config.diffwave.mel_hop
  starts = jax.random.randint(rng, (waves.shape[0],), 0, mel.shape[1] - frames + 1)
  crop = lambda array, start, size: jax.lax.dynamic_slice_in_dim(array, start, size, axis=0)
  return (jax.vmap(lambda wave, f: crop(wave, f * hop, frames * hop))(waves, starts),
          dict(cond, mel=jax.vmap(lambda spectrogram, f: crop(spectrogram, f, frames))(mel, starts)))


KINDS: Dict[str, Kind] = {
    "none": Kind(train_cond=_no_cond, sampling_cond=_no_cond),
    "class": Kind(train_cond=_class_train_cond, sampling_cond=_class_sampling_cond,
                  null=_class_null),
    "mel": Kind(train_cond=_mel_train_cond, sampling_cond=_mel_sampling_cond, crop=_mel_crop),
}


def kind(config) -> Kind:
  return KINDS[kind_of(config)]


def train_cond(config, x_start, data_cond, rng) -> Dict[str, Any]:
  return kind(config).train_cond(config, x_start, data_cond, rng)


def sampling_cond(config, num_samples: int) -> Dict[str, np.ndarray]:
  return kind(config).sampling_cond(config, num_samples)


def crop(config, rng, x_start, cond):
  """(x_start, cond) cropped where the kind crops and training.crop_mel_frames asks."""
  crop_fn = kind(config).crop
  if crop_fn is None or not config.training.get("crop_mel_frames", 0):
    return x_start, cond
  return crop_fn(config, rng, x_start, cond)


def split_batch(batch):
  """(images, data_cond) of a batch: an array of images (no conditioning data), or a dict with
  "image" and the data's conditioning (e.g. "label")."""
  if isinstance(batch, dict):
    return batch["image"], {key: value for key, value in batch.items() if key != "image"}
  return batch, {}


def guided(model_fn: Callable, cond, null_cond, guidance: float, variance_type: str) -> Callable:
  """Classifier-free guidance (Ho & Salimans 2021, eq. 6): model_fn(x, t, depth, cond) ->
  a model_fn(x, t, depth) whose eps is (1 + w) eps(x, t, c) - w eps(x, t, null), both halves in
  one forward of the doubled batch (at the same depth). A learned variance is the conditional
  half's."""
  def guided_fn(x, t, depth=None):
    both_cond = jax.tree.map(lambda c, n: jnp.concatenate([c, n]), cond, null_cond)
    both = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), depth, both_cond)
    conditional, unconditional = jnp.split(both, 2)
    eps_c, rest = diffusion_lib.split_model_output(conditional, variance_type)
    eps_u, _ = diffusion_lib.split_model_output(unconditional, variance_type)
    eps = (1.0 + guidance) * eps_c - guidance * eps_u
    return eps if rest is None else jnp.concatenate([eps, rest], axis=-1)
  return guided_fn
