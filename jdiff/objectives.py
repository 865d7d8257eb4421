"""Training objectives and timestep samplers (the HSE coursework "Diffusion Generative Models",
A. Baryshnikov, sections 2.1, 2.2, 3.1).

Losses (per example; the train step averages them):
  simple:  L_simple, Ho et al. eq. 6.
  hybrid:  L_simple + lambda L_vlb with learned variances (Nichol & Dhariwal); the vlb term sees
           the predicted mean through a stop-gradient, so only the variance learns from it.
  iwdiff:  Algorithm 3: k noise draws per example, sum_i softmax(l)_i l_i with the softmax
           weights held constant and computed from line 6's l_i (the per-example *sum* of squared
           errors; training.iwdiff_weights='mean' is the per-pixel-mean ablation).
Timestep samplers: uniform, or loss-aware importance sampling p_t ∝ sqrt(E[L_t^2]) over the
last HISTORY_LENGTH losses of each t, with the loss reweighted by 1 / (T p_t).
Likelihood: the VLB terms per t (prior L_T, KL terms, discretized Gaussian decoder L_0) in bits
per dimension, and their sum over all T for a batch.
"""

from typing import Callable, Tuple

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np

from jdiff import choices
from jdiff import diffusion as diffusion_lib

LOSSES = choices.LOSSES
IWDIFF_WEIGHTS = choices.IWDIFF_WEIGHTS
TIMESTEP_SAMPLERS = choices.TIMESTEP_SAMPLERS
HYBRID_VLB_WEIGHT = 0.001   # lambda of improved DDPM
HISTORY_LENGTH = 10         # losses kept per t by the loss-aware sampler
UNIFORM_FRACTION = 0.001    # probability mass mixed in uniformly, so no t is starved

_LOG2 = float(np.log(2.0))


def mean_flat(x):
  """Mean over all but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


# ---------------------------------------------------------------------------------------------
# Per-example losses for one noise draw.

def l_simple(diffusion: diffusion_lib.GaussianDiffusion, model_fn, x_start, t, noise, variance_type="fixedlarge"):
  """Per-example || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2 (mean over pixels)."""
  x_t = diffusion_lib.q_sample(diffusion, x_start, t, noise)
  eps, _ = diffusion_lib.split_model_output(model_fn(x_t, t), variance_type)
  return mean_flat((noise - eps) ** 2)


def vlb_term_bpd(diffusion: diffusion_lib.GaussianDiffusion, model_output, x_start, x_t, t, *,
                 variance_type: str, clip_denoised: bool):
  """L_{t} in bits/dim per example: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0, and the
  discretized Gaussian decoder's -log p(x_0|x_1) for t = 0 (0-based steps)."""
  true_mean, _, true_log_variance = diffusion_lib.q_posterior_mean_variance(diffusion, x_start, x_t, t)
  mean, log_variance, _, _ = diffusion_lib.p_mean_variance(
      diffusion, model_output, x_t, t, variance_type=variance_type, clip_denoised=clip_denoised)
  kl = mean_flat(diffusion_lib.normal_kl(true_mean, true_log_variance, mean, log_variance)) / _LOG2
  decoder_nll = -mean_flat(diffusion_lib.discretized_gaussian_log_likelihood(
      x_start, mean, 0.5 * log_variance)) / _LOG2
  return jnp.where(t == 0, decoder_nll, kl)


def prior_bpd(diffusion: diffusion_lib.GaussianDiffusion, x_start):
  """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim per example; no parameters enter it."""
  t_last = jnp.full(x_start.shape[:1], diffusion.num_timesteps - 1)
  mean, _, log_variance = diffusion_lib.q_mean_variance(diffusion, x_start, t_last)
  return mean_flat(diffusion_lib.normal_kl(mean, log_variance, 0.0, 0.0)) / _LOG2


def hybrid_loss(diffusion: diffusion_lib.GaussianDiffusion, model_fn, x_start, t, noise):
  """L_simple + lambda L_vlb per example (learned_range models).

  L_vlb = sum over the T terms; with t uniform, T L_t is its one-sample estimate, so the vlb part
  is lambda * T * L_t (improved DDPM's "rescaled" form, equal to L_t at T = 1000). The mean is
  passed through stop_gradient there: L_simple alone trains the mean, the vlb the variance.
  """
  x_t = diffusion_lib.q_sample(diffusion, x_start, t, noise)
  eps, v_raw = diffusion_lib.split_model_output(model_fn(x_t, t), "learned_range")
  mse = mean_flat((noise - eps) ** 2)
  frozen_mean_output = jnp.concatenate([jax.lax.stop_gradient(eps), v_raw], axis=-1)
  vlb = vlb_term_bpd(diffusion, frozen_mean_output, x_start, x_t, t,
                     variance_type="learned_range", clip_denoised=False)
  return mse + HYBRID_VLB_WEIGHT * diffusion.num_timesteps * vlb


def example_losses(loss_type: str, diffusion, model_fn, x_start, t, noise, variance_type: str):
  """Per-example loss of one noise draw. IWDiff draws L_simple k times (Algorithm 3)."""
  if loss_type in ("simple", "iwdiff"):
    return l_simple(diffusion, model_fn, x_start, t, noise, variance_type)
  if loss_type == "hybrid":
    return hybrid_loss(diffusion, model_fn, x_start, t, noise)
  raise ValueError(f"loss {loss_type!r}: allowed {LOSSES}")


# ---------------------------------------------------------------------------------------------
# IWDiff (Algorithm 3) and the gradient of any of the losses.
#
# Algorithm 3 (the HSE coursework): line 6, l_i = ||eps_i - eps_theta(x_t(eps_i), t)||_2^2
# summed over all D values of an example; lines 8-9, l_max and s = sum_i exp(l_i - l_max); line 10,
# a gradient step on sum_i l_i exp(l_i - l_max) / s = sum_i w_i l_i, w = softmax(l) held constant.
# jdiff's per-example losses are per-pixel means (l_i / D, as L_simple is everywhere here), so the
# weights are softmax(D * loss) ("sum", the algorithm) and the loss that is differentiated is
# sum_i w_i (l_i / D): line 10's objective divided by the constant D. Its gradient is line 10's
# gradient / D, the scale of L_simple, so Adam's epsilon, the learning rate and grad-norm clipping
# behave as for L_simple (with D = 3072 on CIFAR-10 the raw sum would be clipped every step).


def iwdiff_weight_scale(weights_from: str, example_shape) -> float:
  """The factor from a per-pixel-mean loss to the l_i the softmax sees.

  "sum": D = prod(example_shape), Algorithm 3 line 6's squared L2 norm over all values;
  "mean": 1, the softmax over per-pixel means (an ablation: at D = 3072 its temperature is 3072x
  higher and the weights are nearly uniform).
  """
  if weights_from == "sum":
    return float(np.prod(example_shape))
  if weights_from == "mean":
    return 1.0
  raise ValueError(f"IWDiff weights from {weights_from!r}: allowed {IWDIFF_WEIGHTS}")


def importance_weights(draw_losses, weight_scale: float = 1.0):
  """Algorithm 3 lines 8-10's weights exp(l_i - l_max) / s over the draws (axis 0) of the
  per-draw losses [k, B], l = weight_scale * draw_losses, held constant (stop_gradient).

  jax.nn.softmax subtracts the max as line 8 does, so large losses do not overflow.
  """
  return jax.nn.softmax(weight_scale * jax.lax.stop_gradient(draw_losses), axis=0)


def iwdiff_combine(draw_losses, weight_scale: float = 1.0):
  """sum_i w_i loss_i per example for draw losses [k, B]; with k = 1 it is loss_1 exactly (w = 1)."""
  return jnp.sum(importance_weights(draw_losses, weight_scale) * draw_losses, axis=0)


def objective_value_and_grad(draw_loss_fn: Callable, params, noises, dropout_rngs, time_weights, *,
                             accumulate: bool = False, weight_scale: float = 1.0):
  """(loss, grads, per-example losses [B]) of mean_b(time_weight_b * sum_i w_ib l_ib).

  draw_loss_fn(params, noise, dropout_rng) -> per-example losses [B] of one draw.
  noises: [k, B, ...] and dropout_rngs: [k] keys; k = 1 is the plain (non-IW) loss, since its
  weight is exactly 1. w = importance_weights(l, weight_scale) (see iwdiff_weight_scale).
  The per-example losses returned (weighted over draws, not by time) feed
  the loss-aware sampler's history.

  accumulate=False differentiates all k draws at once (activations of all k are live).
  accumulate=True keeps memory flat in k: a forward-only pass computes the k losses and so the
  weights; then a scan over draws adds up the gradient of w_i l_i one draw at a time. Same
  result (up to float summation order) for one extra forward pass per draw.
  """
  num_draws = noises.shape[0]
  if not accumulate or num_draws == 1:
    def loss_fn(p):
      draw_losses = jnp.stack([draw_loss_fn(p, noises[i], dropout_rngs[i]) for i in range(num_draws)])
      per_example = iwdiff_combine(draw_losses, weight_scale)
      return jnp.mean(time_weights * per_example), per_example
    (loss, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, per_example

  draw_losses = _forward_only_draw_losses(draw_loss_fn, params, noises, dropout_rngs)
  weights = importance_weights(draw_losses, weight_scale)

  def add_draw_gradient(grads, draw):
    noise, dropout_rng, weight = draw
    draw_grads = jax.grad(lambda p: jnp.mean(time_weights * weight * draw_loss_fn(p, noise, dropout_rng)))(params)
    return jax.tree.map(jnp.add, grads, draw_grads), None

  grads, _ = jax.lax.scan(add_draw_gradient, jax.tree.map(jnp.zeros_like, params),
                          (noises, dropout_rngs, weights))
  per_example = jnp.sum(weights * draw_losses, axis=0)
  return jnp.mean(time_weights * per_example), grads, per_example


def _forward_only_draw_losses(draw_loss_fn: Callable, params, noises, dropout_rngs):
  """[k, B] losses, one draw at a time, without gradient."""
  frozen_params = jax.lax.stop_gradient(params)
  return jax.lax.map(lambda draw: draw_loss_fn(frozen_params, *draw), (noises, dropout_rngs))


def forward_only_losses(draw_loss_fn: Callable, params, noises, dropout_rngs,
                        weight_scale: float = 1.0):
  """The per-example losses objective_value_and_grad would report, without gradient."""
  return iwdiff_combine(_forward_only_draw_losses(draw_loss_fn, params, noises, dropout_rngs),
                        weight_scale)


# ---------------------------------------------------------------------------------------------
# Loss-aware timestep sampler (improved DDPM's second-moment resampler).

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossHistory:
  """The last HISTORY_LENGTH losses of each step t, kept as a ring buffer.

  losses: [T, HISTORY_LENGTH] float32; counts: [T] int32, how many losses t has ever received
  (counts % HISTORY_LENGTH is the next slot to write).
  """
  losses: jax.Array
  counts: jax.Array


def init_loss_history(num_timesteps: int) -> LossHistory:
  return LossHistory(losses=jnp.zeros((num_timesteps, HISTORY_LENGTH), jnp.float32),
                     counts=jnp.zeros((num_timesteps,), jnp.int32))


def timestep_probabilities(history: LossHistory):
  """p_t ∝ sqrt(mean of the stored L_t^2), mixed with UNIFORM_FRACTION of uniform; uniform
  until every t has HISTORY_LENGTH losses."""
  num_timesteps = history.counts.shape[0]
  uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps)
  root_mean_square = jnp.sqrt(jnp.mean(history.losses ** 2, axis=-1))
  loss_aware = root_mean_square / jnp.maximum(jnp.sum(root_mean_square), 1e-30)
  mixed = (1.0 - UNIFORM_FRACTION) * loss_aware + UNIFORM_FRACTION * uniform
  warmed_up = jnp.all(history.counts >= HISTORY_LENGTH)
  return jnp.where(warmed_up, mixed, uniform)


def sample_timesteps(history: LossHistory, rng, batch_size: int) -> Tuple[jax.Array, jax.Array]:
  """(t [B], loss weights 1 / (T p_t) [B]) so that the weighted loss is unbiased."""
  probabilities = timestep_probabilities(history)
  t = jax.random.choice(rng, probabilities.shape[0], (batch_size,), p=probabilities)
  return t, 1.0 / (probabilities.shape[0] * probabilities[t])


def update_loss_history(history: LossHistory, t, losses) -> LossHistory:
  """Appends each example's loss to its t's history, in batch order.

  Several examples may share a t: each gets its rank among the earlier ones with that t, so it
  writes the slot a sequential update would; only the last HISTORY_LENGTH of them are kept.
  """
  t = t.astype(jnp.int32)
  same_t = t[:, None] == t[None, :]
  earlier = jnp.tril(same_t, k=-1)
  rank = jnp.sum(earlier, axis=1)
  occurrences = jnp.sum(same_t, axis=1)
  kept = rank >= occurrences - HISTORY_LENGTH
  slot = (history.counts[t] + rank) % HISTORY_LENGTH
  # Dropped examples write out of bounds, which mode="drop" discards.
  row = jnp.where(kept, t, history.counts.shape[0])
  losses = history.losses.at[row, slot].set(losses.astype(jnp.float32), mode="drop")
  counts = history.counts.at[t].add(1)
  return LossHistory(losses=losses, counts=counts)


def refresh_loss_history(history: LossHistory, losses_at: Callable, rng, batch_size: int,
                         num_updates: int) -> LossHistory:
  """The "+2" variant: num_updates forward-only loss evaluations that only feed the history.

  losses_at(update, t, rng) -> per-example losses [B] at steps t of that update's own batch of
  images, without gradient. Their t are drawn uniformly: the point is to refresh the histories
  of the steps the sampler rarely picks, which otherwise go stale.
  """
  num_timesteps = history.counts.shape[0]
  for update in range(num_updates):
    t_rng, loss_rng = jax.random.split(jax.random.fold_in(rng, update))
    t = jax.random.randint(t_rng, (batch_size,), 0, num_timesteps)
    history = update_loss_history(history, t, losses_at(update, t, loss_rng))
  return history


# ---------------------------------------------------------------------------------------------
# Bits per dimension over the whole chain.

def bits_per_dim(diffusion: diffusion_lib.GaussianDiffusion, model_fn: Callable, x_start, rng, *,
                 variance_type: str, clip_denoised: bool = True):
  """The VLB of a batch in bits/dim: L_T + sum_t L_t, each L_t with its own x_t ~ q(x_t | x_0).

  Returns {"total": [B], "prior": [B], "terms": [B, T]}; one lax.map over t (traced once).
  """
  def term(step):
    t = jnp.full(x_start.shape[:1], step)
    noise = jax.random.normal(jax.random.fold_in(rng, step), x_start.shape)
    x_t = diffusion_lib.q_sample(diffusion, x_start, t, noise)
    return vlb_term_bpd(diffusion, model_fn(x_t, t), x_start, x_t, t,
                        variance_type=variance_type, clip_denoised=clip_denoised)

  terms = jax.lax.map(term, jnp.arange(diffusion.num_timesteps)).T
  prior = prior_bpd(diffusion, x_start)
  return {"total": jnp.sum(terms, axis=1) + prior, "prior": prior, "terms": terms}
