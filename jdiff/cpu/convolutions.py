"""Convolutions for XLA:CPU: the filter gradient as matrix products, and Winograd F(2x2, 3x3).

Measured when XLA:CPU ran convolutions on YNNPACK (`cpu.convolutions=ynn`, XLA's default in
jax 0.10), its filter (weight) gradient convolution is 3.5x slower than the forward
convolution of the same size at 32x32 (Ho net, batch 8, [8, 32, 32, 128] x 3x3 -> 128: forward
15.5 ms, YNNPACK's filter gradient 54.9 ms; jax 0.4's XLA:CPU was 4-12x slower than its
forward). Written as one matrix product per kernel tap,

    dW[tap] = sum over batch and output positions of x_padded[at tap, strided]^T @ dy,

the same gradient takes 43.0 ms there. On XLA's Eigen convolutions (`cpu.convolutions=eigen`,
and under jdiff's default `winograd` for the convolutions Winograd leaves to Eigen) XLA's own
filter gradient is faster than both (16.8 ms;
docs/results/bench_depth_ho_cpu/conv_by_resolution.py), so `auto` uses these matrix products
only under `ynn`. `conv_general_dilated` is a drop-in for
`lax.conv_general_dilated` (flax `nn.Conv` takes it as `conv_general_dilated=`): the forward
pass and the input gradient are XLA's own; only the filter gradient differs, and only in float
rounding (sums in another order, ~1e-6 relative).

XLA:CPU's own filter gradient is fast only at a program's top level: inside a loop or a branch
(lax.scan, lax.switch) the gradient of that convolution (forward and filter gradient) took 7.8 s
against 29 ms outside, on either library; with these matrix products it takes 69 ms anywhere.
So `cpu.filter_grad=auto` means them for train steps that take their gradient inside one
(jdiff/cpu: CpuCompute.convolution).

Grouped and input-dilated convolutions and non-channels-last layouts fall back to
`lax.conv_general_dilated` unchanged. Otherwise `cpu.filter_grad=auto` uses the matrix products
under `cpu.convolutions=ynn` only: Eigen's own filter gradient is faster. Off the CPU none of this
module is used: GPU and TPU run lax's convolution (jdiff/compute.py).

Winograd (`cpu.convolutions=winograd`, jdiff's default on CPU). A 3x3, stride-1, SAME convolution
computed as Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016, "Fast Algorithms for
Convolutional Neural Networks", section 4.1, with its F(2x2, 3x3) matrices B^T, G, A^T): each 2x2
output tile is Y = A^T [(G g G^T) * (B^T d B)] A for the 4x4 input tile d around it, i.e. 16 matrix
products [tiles, C_in] x [C_in, C_out] (YNNPACK's) and cheap transforms, 2.25x fewer multiply-adds
than the direct convolution. Not differentiated (sampling, evaluation), the 16 products are separate
dot_generals on the 16 transformed blocks; differentiated, one batched dot_general on them stacked,
which the backward pass reuses: XLA copies the stacked blocks into place (a concatenate 4x the
input's size, a quarter of the forward's time at 32x32), but the gradients of the batched form are
the faster ones (winograd_conv3x3). The backward pass is the transposes of the products and
transforms, written out so that the input gradient is four shifted sums interleaved (autodiff's
transpose of the 16 strided tile slices pads and sums 16 arrays of the input's size). Measured
2026-12-07 on the Ho net: the written-out input gradient makes the gradients 1.02-1.04x faster
than autodiff's transposes, and the output transform's transpose written out too, with the input
gradient kept out of its consumer's loop (_computed_apart), 1.06-1.12x faster again. Float32
results agree with XLA's convolution to ~1e-6 relative. Measured one convolution at a time
against XLA's Eigen convolution on Ho et al.'s shapes at batch 8
(docs/results/bench_torch_cpu/winograd_by_shape_batch8.json, 2026-12-07; docs/performance.md):
forward 1.38-1.77x and forward with both gradients 1.31-1.50x faster on the shapes it takes; the
Ho net's train step took 0.79-0.86 of Eigen's time at batch 8 and 32 (measured 2026-12-07).
Small problems lose (the transforms dominate: 4x4 at batch 8 0.92x, and the quickstart's 32-64
channel convolutions 0.69-0.85x, measured 2026-12-07): `winograd_applies` keeps it to float32
convolutions with >= WINOGRAD_MIN_CHANNELS input and output channels and >= WINOGRAD_MIN_TILES
output tiles (batch x H x W / 4; 256, the 32x32 level at batch 1: with it the Ho net's batch-1
forward and train step ran 1.07-1.08x faster than with 512, measured 2026-12-07), the rest go
to the other convolution of the setting (`with_winograd`).
"""

import functools
import itertools
from typing import Callable, Sequence

import jax
from jax import lax
import jax.numpy as jnp



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


# Winograd F(2x2, 3x3): Lavin & Gray (2016), section 4.1's matrices.
_WINOGRAD_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_WINOGRAD_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_WINOGRAD_AT = ((1, 1, 1, 0), (0, 1, -1, -1))
# Below these the transforms cost more than the products save (measured, module docstring).
WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_TILES = 256


def _combinations(matrix, parts):
  """[sum_j matrix[i][j] * parts[j] for each row i], written out (zeros skipped, +-1 as adds)."""
  rows = []
  for coefficients in matrix:
    total = None
    for coefficient, part in zip(coefficients, parts):
      if coefficient == 0:
        continue
      term = part if coefficient == 1 else -part if coefficient == -1 else part * coefficient
      total = term if total is None else total + term
    rows.append(total)
  return rows


def _winograd_input_parts(x):
  """The 16 entries (u, v) of V = B^T d B over every 4x4 input tile d (stride 2) of NHWC x, each
  [B, H / 2, W / 2, C_in], in row-major (u, v) order."""
  _, height, width, _ = x.shape
  tile_rows, tile_cols = height // 2, width // 2
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # d's rows r are the strided slices padded[:, r::2].
  rows = _combinations(_WINOGRAD_BT, [padded[:, r:r + 2 * tile_rows:2] for r in range(4)])
  parts = []
  for row in rows:
    parts += _combinations(_WINOGRAD_BT, [row[:, :, c:c + 2 * tile_cols:2] for c in range(4)])
  return parts


def _winograd_kernel_transform(kernel):
  """U = G g G^T of the HWIO 3x3 kernel: [16, C_in, C_out]."""
  u = []
  for row in _combinations(_WINOGRAD_G, [kernel[0], kernel[1], kernel[2]]):
    u += _combinations(_WINOGRAD_G, [row[0], row[1], row[2]])
  return jnp.stack(u)


def _winograd_output_transform(products, shape):
  """Y = A^T M A of every tile, the 2x2 outputs interleaved into `shape`; products[i][j] is
  entry (i, j) of M, [B, H / 2, W / 2, C_out]."""
  columns = [_combinations(_WINOGRAD_AT, [products[i][j] for i in range(4)]) for j in range(4)]
  tiles = [_combinations(_WINOGRAD_AT, [column[p] for column in columns]) for p in range(2)]
  y = jnp.stack([jnp.stack(pair, axis=3) for pair in tiles], axis=2)  # [B, th, 2, tw, 2, C]
  return y.reshape(shape)


def _transposed(matrix):
  return tuple(zip(*matrix))


def _winograd_input_transform_transposed(d_inputs, shape):
  """dx from dV [16, tiles, C_in]: the transpose of V = B^T d B over the overlapping 4x4 tiles of
  the padded input. Each padded pixel (2I + p, 2J + q), p, q in {0, 1}, lies in at most four
  tiles, at offset (p or p + 2, q or q + 2) of tile (I or I - 1, J or J - 1), so dx is four
  shifted sums of E = B dV B^T interleaved, which XLA fuses into one loop, with its consumer
  where it has one (autodiff of the strided slices pads and adds 16 full-size arrays instead)."""
  batch, height, width, channels = shape
  tile_rows, tile_cols = height // 2, width // 2
  d_parts = d_inputs.reshape(16, batch, tile_rows, tile_cols, channels)
  b = _transposed(_WINOGRAD_BT)
  columns = [_combinations(b, [d_parts[4 * u + v] for u in range(4)]) for v in range(4)]
  e = [_combinations(b, [column[r] for column in columns]) for r in range(4)]  # e[r][s]

  def shifted(part, row_shift, col_shift):  # tile (I - row_shift, J - col_shift) at block (I, J)
    return jnp.pad(part, ((0, 0), (row_shift, 1 - row_shift), (col_shift, 1 - col_shift), (0, 0)))

  blocks = [[shifted(e[p][q], 0, 0) + shifted(e[p + 2][q], 1, 0) + shifted(e[p][q + 2], 0, 1)
             + shifted(e[p + 2][q + 2], 1, 1) for q in range(2)] for p in range(2)]
  padded = jnp.stack([jnp.stack(row, axis=3) for row in blocks], axis=2)  # [B, th+1, 2, tw+1, 2, C]
  padded = padded.reshape(batch, height + 2, width + 2, channels)
  return padded[:, 1:-1, 1:-1]


def _winograd_batched_forward(x, kernel, precision):
  """Winograd with V stacked into [16, tiles, C_in] and one batched product; (y, (V, U))."""
  batch, height, width, channels = x.shape
  inputs = jnp.stack(_winograd_input_parts(x)).reshape(16, -1, channels)
  kernels = _winograd_kernel_transform(kernel)
  products = lax.dot_general(inputs, kernels, (((2,), (1,)), ((0,), (0,))), precision=precision)
  products = products.reshape(4, 4, batch, height // 2, width // 2, kernel.shape[-1])
  return _winograd_output_transform(products, x.shape[:-1] + kernel.shape[-1:]), (inputs, kernels)


def _winograd_output_transform_transposed(dy):
  """dM [16, tiles, C_out] from dy: the transpose of Y = A^T M A, dM = A dY A^T of every 2x2
  output tile dY, whose entries are dy's four parity slices (jax.linear_transpose of
  _winograd_output_transform pads and sums 16 arrays instead: 7.7 ms against 2.1 ms alone at
  32x32 x 128, batch 8, measured 2026-12-07)."""
  a = _transposed(_WINOGRAD_AT)
  parities = [[dy[:, p::2, q::2] for q in range(2)] for p in range(2)]
  columns = [_combinations(a, [parities[p][q] for p in range(2)]) for q in range(2)]
  d_products = []
  for i in range(4):
    d_products += _combinations(a, [column[i] for column in columns])
  return jnp.stack(d_products).reshape(16, -1, dy.shape[-1])


def _computed_apart(fn, operand, probe):
  """fn(operand) written to memory by a loop of its own. XLA:CPU fuses the Winograd input
  gradient into its consumer (the swish and GroupNorm backward), and that fused loop runs 2-3x
  slower than the two apart (its pads and slices keep the exp of the swish from vectorising);
  lax.optimization_barrier is dropped before fusion, but a conditional's result is always
  materialised. Both branches are fn, so the predicate (probe's first element equals itself:
  false only for a NaN) never changes the result. It reads probe (the transformed kernel), not
  operand, so that under jax.vmap over the data it stays one scalar and the cond a cond (a
  batched predicate makes it a select that computes fn twice)."""
  first = probe.reshape(-1)[0]
  return lax.cond(first == first, fn, fn, operand)


def _winograd_batched_backward(precision, residuals, dy):
  """dx and dkernel: the two batched products' transposes and the transforms' transposes (written
  out for the output and input transforms, jax's linear_transpose for the kernel transform).
  Against autodiff's transposes the Ho net's batch-8 gradient takes 0.94 of the time at full
  depth and 0.90 at depth 3 (the 32x32 level alone), batch 32 0.94 (measured 2026-12-07)."""
  inputs, kernels = residuals
  batch, height, width, out_channels = dy.shape
  in_channels = inputs.shape[-1]
  d_products = _winograd_output_transform_transposed(dy)
  d_kernels = lax.dot_general(inputs, d_products, (((1,), (1,)), ((0,), (0,))),
                              precision=precision)
  (d_kernel,) = jax.linear_transpose(
      _winograd_kernel_transform,
      jax.ShapeDtypeStruct((3, 3, in_channels, out_channels), dy.dtype))(d_kernels)
  d_inputs = lax.dot_general(d_products, kernels, (((2,), (2,)), ((0,), (0,))),
                             precision=precision)
  dx = _computed_apart(
      lambda d: _winograd_input_transform_transposed(d, (batch, height, width, in_channels)),
      d_inputs, kernels)
  return dx, d_kernel


def _winograd_separate(x, kernel, precision):
  """Winograd with 16 separate products [B, H / 2, W / 2, C_in] x [C_in, C_out]: XLA copies the
  stacked V of the batched form into place (a concatenate of 4x the input's size), which this
  form never builds."""
  kernels = _winograd_kernel_transform(kernel)
  products = [lax.dot_general(part, kernels[i], (((3,), (0,)), ((), ())), precision=precision)
              for i, part in enumerate(_winograd_input_parts(x))]
  return _winograd_output_transform([products[4 * i:4 * i + 4] for i in range(4)],
                                    x.shape[:-1] + kernel.shape[-1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def winograd_conv3x3(x, kernel, precision=None):
  """The 3x3 stride-1 SAME convolution of NHWC x [B, H, W, C_in] (H, W even) with HWIO kernel
  [3, 3, C_in, C_out] as Winograd F(2x2, 3x3) (module docstring).

  Undifferentiated (sampling, evaluation) it runs 16 separate products; differentiated, one
  batched product over the stacked V, which the backward pass reuses. Each is the faster of the
  two there (one convolution at a time, module docstring): the separate products skip the copy
  that stacks V, but their transposes run slower in the gradients. The backward is written out
  (_winograd_batched_backward); a custom VJP computing the input gradient as Winograd of dy with
  the flipped kernel was no faster than autodiff (1.0-1.1x the time). Reverse mode only, as
  conv_general_dilated."""
  return _winograd_separate(x, kernel, precision)


winograd_conv3x3.defvjp(_winograd_batched_forward, _winograd_batched_backward)


def winograd_applies(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count: int = 1,
                     batch_group_count: int = 1, preferred_element_type=None) -> bool:
  """Whether conv_general_dilated's arguments are a convolution winograd_conv3x3 computes and
  large enough to gain (module docstring)."""
  if lhs.ndim != 4 or tuple(rhs.shape[:2]) != (3, 3) or tuple(window_strides) != (1, 1):
    return False
  numbers = dimension_numbers
  if numbers is not None and not isinstance(numbers, lax.ConvDimensionNumbers):
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, numbers)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (3, 3), (1, 1), padding)
  batch, height, width, channels = lhs.shape
  return (numbers == _channels_last_numbers(2)
          and tuple(tuple(pair) for pair in padding) == ((1, 1), (1, 1))
          and tuple(lhs_dilation or (1, 1)) == (1, 1) and tuple(rhs_dilation or (1, 1)) == (1, 1)
          and feature_group_count == 1 and batch_group_count == 1
          and preferred_element_type is None
          and lhs.dtype == rhs.dtype == jnp.float32
          and height % 2 == 0 and width % 2 == 0
          and min(channels, rhs.shape[-1]) >= WINOGRAD_MIN_CHANNELS
          and batch * height * width // 4 >= WINOGRAD_MIN_TILES)


def with_winograd(other: Callable) -> Callable:
  """A lax.conv_general_dilated that runs winograd_conv3x3 where winograd_applies, `other`
  elsewhere."""
  def conv_fn(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
              preferred_element_type=None):
    if winograd_applies(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                        dimension_numbers, feature_group_count, batch_group_count,
                        preferred_element_type):
      return winograd_conv3x3(lhs, rhs, precision)
    return other(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                 rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                 feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                 precision=precision, preferred_element_type=preferred_element_type)
  return conv_fn


winograd_or_xla = with_winograd(lax.conv_general_dilated)
winograd_or_matmul = with_winograd(conv_general_dilated)
