"""Convolution whose filter gradient is computed as matrix products.

Measured when XLA:CPU ran convolutions on YNNPACK (`cpu_convolutions=ynn`, XLA's default in
jax 0.10), its filter (weight) gradient convolution is 3.5x slower than the forward
convolution of the same size at 32x32 (Ho net, batch 8, [8, 32, 32, 128] x 3x3 -> 128: forward
15.5 ms, YNNPACK's filter gradient 54.9 ms; jax 0.4's XLA:CPU was 4-12x slower than its
forward). Written as one matrix product per kernel tap,

    dW[tap] = sum over batch and output positions of x_padded[at tap, strided]^T @ dy,

the same gradient takes 43.0 ms there. On XLA's Eigen convolutions (`cpu_convolutions=eigen`,
jdiff's default) XLA's own filter gradient is faster than both (16.8 ms;
docs/results/bench_depth_ho_cpu/conv_by_resolution.py), so `auto` uses these matrix products
only under `ynn`. `conv_general_dilated` is a drop-in for
`lax.conv_general_dilated` (flax `nn.Conv` takes it as `conv_general_dilated=`): the forward
pass and the input gradient are XLA's own; only the filter gradient differs, and only in float
rounding (sums in another order, ~1e-6 relative).

XLA:CPU's own filter gradient is fast only at a program's top level: inside a loop or a branch
(lax.scan, lax.switch) the gradient of that convolution (forward and filter gradient) took 7.8 s
against 29 ms outside, on either library; with these matrix products it takes 69 ms anywhere.
So builders.conv_filter_grad settles `auto` to them for train steps that take their gradient
inside one.

Grouped and input-dilated convolutions and non-channels-last layouts fall back to
`lax.conv_general_dilated` unchanged. `filter_grad_fn("auto")` uses the matrix products on the
CPU backend under `cpu_convolutions=ynn` only: Eigen's and the GPU/TPU compilers' own filter
gradients are faster.
"""

import functools
import itertools
from typing import Callable, Sequence

import jax
from jax import lax
import jax.numpy as jnp

from jdiff import choices
from jdiff import cpu_kernels


def _channels_last_numbers(num_spatial: int) -> lax.ConvDimensionNumbers:
  rank = num_spatial + 2
  spatial = tuple(range(1, rank - 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, rank - 1) + spatial,
                                  rhs_spec=(rank - 1, rank - 2) + tuple(range(rank - 2)),
                                  out_spec=(0, rank - 1) + spatial)


def _forward(x, kernel, strides, pads, dilation, precision):
  return lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation,
                                  dimension_numbers=_channels_last_numbers(x.ndim - 2),
                                  precision=precision)


def _filter_grad(x, dy, kernel_shape, strides, pads, dilation, precision, dtype):
  """dW [*kernel_window, C_in, C_out]: one matrix product per kernel tap."""
  x = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  out_spatial = dy.shape[1:-1]
  dy_rows = dy.reshape(-1, dy.shape[-1])
  taps = []
  for tap in itertools.product(*(range(size) for size in kernel_shape[:-2])):
    start = (0,) + tuple(k * d for k, d in zip(tap, dilation)) + (0,)
    limit = ((x.shape[0],) + tuple(s + (o - 1) * stride + 1
                                   for s, o, stride in zip(start[1:-1], out_spatial, strides))
             + (x.shape[-1],))
    window = lax.slice(x, start, limit, (1,) + tuple(strides) + (1,))
    taps.append(lax.dot_general(window.reshape(-1, x.shape[-1]), dy_rows,
                                (((0,), (0,)), ((), ())), precision=precision,
                                preferred_element_type=jnp.float32))
  return jnp.stack(taps).reshape(kernel_shape).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, kernel, strides, pads, dilation, precision):
  return _forward(x, kernel, strides, pads, dilation, precision)


def _conv_fwd(x, kernel, strides, pads, dilation, precision):
  return _forward(x, kernel, strides, pads, dilation, precision), (x, kernel)


def _conv_bwd(strides, pads, dilation, precision, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _forward(x, kernel, strides, pads, dilation, precision), x)
  (dx,) = input_vjp(dy)
  return dx, _filter_grad(x, dy, kernel.shape, strides, pads, dilation, precision, kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None):
  """lax.conv_general_dilated with the filter gradient as matrix products (module docstring)."""
  num_spatial = lhs.ndim - 2
  ones = (1,) * num_spatial
  numbers = dimension_numbers
  if numbers is not None and not isinstance(numbers, lax.ConvDimensionNumbers):
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, numbers)
  supported = (feature_group_count == 1 and batch_group_count == 1
               and preferred_element_type is None
               and tuple(lhs_dilation or ones) == ones
               and numbers == _channels_last_numbers(num_spatial))
  if not supported:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  dilation = tuple(rhs_dilation or ones)
  strides = tuple(window_strides)
  if isinstance(padding, str):
    window = tuple((k - 1) * d + 1 for k, d in zip(rhs.shape[:-2], dilation))
    pads = tuple(lax.padtype_to_pads(lhs.shape[1:-1], window, strides, padding))
  else:
    pads = tuple(tuple(pair) for pair in padding)
  return _conv(lhs, rhs, strides, pads, dilation, precision)


def filter_grad_fn(filter_grad: str) -> Callable:
  """The conv function for model.conv_filter_grad: 'xla' (lax's own), 'matmul' (this module's),
  'auto' (matmul where XLA:CPU's convolutions are YNNPACK's, XLA's own elsewhere)."""
  if filter_grad not in choices.FILTER_GRADS:
    raise ValueError(f"conv_filter_grad={filter_grad!r}: allowed {choices.FILTER_GRADS}")
  if filter_grad == "auto":
    filter_grad = "matmul" if cpu_kernels.convolutions() == "ynn" else "xla"
  return conv_general_dilated if filter_grad == "matmul" else lax.conv_general_dilated
