"""jdiff against PyTorch (diffusers UNet2DModel) on the Ho et al. CIFAR-10 U-Net, side by side.

Optional: needs the [bench] extra (torch, diffusers). Both networks have the same config (ch 128,
ch_mult 1 2 2 2, 2 res blocks, attention at 16x16 and in the middle, GroupNorm 32, dropout
0.1; diffusers' google/ddpm-cifar10-32 layout) and the same parameter count. In one process,
round by round, it runs the U-Net forward at each batch size and the train step (L_simple,
Adam 2e-4, gradient clipping at 1, dropout 0.1, EMA 0.9999) of jdiff, then of PyTorch, each
call finished before the next (jax.block_until_ready; PyTorch on CPU is synchronous). Reports
images/s (median over rounds), jdiff / PyTorch per round (median, min..max) and the GFLOP/s both
reach on XLA's FLOP count of jdiff's programs with direct convolutions (under
cpu.convolutions=eigen; a Winograd program's own, smaller count is in the JSON as
program_gflop_per_image). CPU only, torch.set_num_threads(--threads).

`--cpu_convolutions=winograd,eigen,ynn,plain` times jdiff under each cpu.convolutions setting of
jdiff/cpu (and `plain`: jdiff/compute.py's Compute, the plain jax.jit, lax convolutions and
optax clipping that GPU and TPU run) against the same PyTorch calls.

  python -m jdiff.tools.bench_torch --config=configs/cifar10_ddpm.py --workdir=/tmp/bt
"""

import os
from typing import Any, Callable

import jax
import numpy as np
from absl import app, flags

from jdiff import builders
from jdiff import choices
from jdiff import compute as compute_lib
from jdiff import cpu
from jdiff import errors
from jdiff import parallel
from jdiff.drivers import train as train_lib
from jdiff.tools import cli
from jdiff.tools import report
from jdiff.tools import timing

flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Forward batch sizes.")
flags.DEFINE_integer("train_batch", 32, "Train-step batch size.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds (after the warm-up rounds).")
# In this process (one glibc heap shared with PyTorch) jdiff's batch-32 train step faulted its
# memory in over its first three calls: 955k, 366k, 125k page faults, up to 4.3 s of kernel time,
# then none (measured 2026-12-07).
flags.DEFINE_integer("warmup_rounds", 3, "Untimed rounds first.")
flags.DEFINE_integer("threads", 2, "torch.set_num_threads.")
# One batch-1 forward (~0.1 s) varied 0.82-1.35x against PyTorch's from round to round
# (docs/results/bench_torch_cpu/bench_torch_a.json): a timed sample of a small batch runs it
# several times.
flags.DEFINE_integer("min_images_per_sample", 8, "Each timed sample of a forward of batch b "
                     "runs it ceil(this / b) times and reports the time per call.")
flags.DEFINE_list("cpu_convolutions", [], "jdiff's XLA:CPU convolution kernels to time, each "
                  "against the same PyTorch calls (default: the config's cpu.convolutions; e.g. "
                  "winograd,eigen; plain: no CPU tuning, as GPU and TPU run).")
PLAIN = "plain"  # jdiff/compute.py's Compute: no CPU tuning
FLAGS = flags.FLAGS


def torch_unet(config):
  """diffusers' UNet2DModel with the Ho et al. CIFAR-10 layout of config.model."""
  from diffusers import UNet2DModel  # pylint: disable=g-import-not-at-top
  m = config.model
  attn_res = set(m.attn_resolutions)
  size = config.data.image_size
  down, up = [], []
  for level in range(len(m.ch_mult)):
    attends = (size >> level) in attn_res
    down.append("AttnDownBlock2D" if attends else "DownBlock2D")
    up.insert(0, "AttnUpBlock2D" if attends else "UpBlock2D")
  return UNet2DModel(
      sample_size=size, in_channels=config.data.num_channels,
      out_channels=config.data.num_channels, block_out_channels=[m.ch * k for k in m.ch_mult],
      layers_per_block=m.num_res_blocks, down_block_types=down, up_block_types=up,
      norm_num_groups=m.num_groups, dropout=m.dropout, time_embedding_type="positional",
      flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None, add_attention=True,
      downsample_padding=0, norm_eps=1e-6)


def make_torch_train_step(model, config, num_timesteps):
  """One L_simple step: Adam, clip at grad_clip, EMA, as jdiff's train step does."""
  import torch  # pylint: disable=g-import-not-at-top
  training = config.training
  optimizer = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
  ema = [p.detach().clone() for p in model.parameters()]
  betas = np.linspace(config.diffusion.beta_start, config.diffusion.beta_end, num_timesteps)
  alphas_cumprod = torch.tensor(np.cumprod(1 - betas), dtype=torch.float32)
  generator = torch.Generator().manual_seed(0)

  def step(images):
    t = torch.randint(0, num_timesteps, (images.shape[0],), generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * images + (1 - a).sqrt() * noise
    loss = torch.nn.functional.mse_loss(model(x_t, t).sample, noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
    optimizer.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, list(model.parameters()), 1.0 - training.ema_decay)  # pylint: disable=protected-access
    return loss
  return step


def compute_for(config, kernels: str) -> compute_lib.Compute:
  """The Compute jdiff is timed under: config.cpu with convolutions=kernels, or (PLAIN) the
  backend-neutral one."""
  if kernels == PLAIN:
    return compute_lib.Compute()
  return cpu.CpuCompute(convolutions=kernels, filter_grad=config.cpu.filter_grad,
                        host_memory=config.cpu.host_memory)


def _jdiff_calls(config, mesh, batch_sizes, train_batch: int, rng, tag: str,
                 compute: compute_lib.Compute):
  """jdiff's forwards and train step, compiled now with `compute`:
  ({name: call}, {what: XLA FLOPs}, {batch: (x, t)}, train images, parameter count); the inputs
  depend only on rng, so every library and PyTorch see the same ones."""
  model, state, train_step = train_lib.build_fresh_training(config, mesh, compute)
  shape = builders.image_shape(config)
  num_timesteps = config.diffusion.num_timesteps
  calls, flops, inputs = {}, {}, {}
  forward = compute.jit(lambda params, x, t: builders.make_model_fn(model, params)(x, t))
  for b in batch_sizes:
    x = rng.standard_normal((b,) + shape).astype(np.float32)
    t = rng.integers(0, num_timesteps, b)
    args = (state.params, jax.numpy.asarray(x), jax.numpy.asarray(t, jax.numpy.float32))
    stats, compiled = timing.compile_only(forward, args)
    flops[f"forward {b}"] = stats["flops"]
    calls[f"jdiff{tag} forward {b}"] = lambda compiled=compiled, args=args: compiled(*args)
    inputs[b] = (x, t)
  images = parallel.global_batch_from_local(
      rng.integers(0, 256, (train_batch,) + shape, dtype=np.uint8), mesh)
  flops["train"] = timing.compile_only(train_step.programs[None], (state, images))[0]["flops"]
  train_step.compile_all(state, images)
  # The train step donates its state: it threads a copy, the forwards keep state.params.
  threaded = {"state": jax.tree.map(jax.numpy.copy, state)}

  def jdiff_train():
    threaded["state"], metrics = train_step.compiled(None)(threaded["state"], images)
    return metrics["loss"]
  calls[f"jdiff{tag} train"] = jdiff_train
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  return calls, flops, inputs, images, num_params


def _repeated(call: Callable[[], Any], times: int) -> Callable[[], Any]:
  """call, `times` times in a row, each blocked on."""
  def repeated():
    for _ in range(times):
      output = jax.block_until_ready(call())
    return output
  return repeated


def run(config, workdir: str, batch_sizes, train_batch: int, num_rounds: int, threads: int,
        kernel_libraries=(), warmup_rounds: int = 3, min_images_per_sample: int = 8):
  """kernel_libraries: the cpu.convolutions settings (or PLAIN) jdiff is timed under (default:
  the config's); with more than one, each is a row of its own against the same PyTorch calls.
  A timed sample of a forward of batch b is ceil(min_images_per_sample / b) calls."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = config.copy_and_resolve_references()
  config.training.batch_size = train_batch
  kernel_libraries = tuple(kernel_libraries) or (config.cpu.convolutions,)
  mesh = parallel.make_mesh()
  T = config.diffusion.num_timesteps
  peer = torch_unet(config)
  torch_params = sum(p.numel() for p in peer.parameters())

  calls, sizes = {}, {f"forward {b}": b for b in batch_sizes}
  sizes["train"] = train_batch
  program_flops = {}
  for kernels in kernel_libraries:
    # Same seed for every library: the same inputs, the same initial parameters.
    jdiff_calls, program_flops[kernels], inputs, images, jdiff_params = _jdiff_calls(
        config, mesh, batch_sizes, train_batch, np.random.default_rng(0), f" [{kernels}]",
        compute_for(config, kernels))
    calls.update(jdiff_calls)
  # The network's FLOPs: XLA's count of a program with direct convolutions (Winograd's does
  # fewer multiply-adds for the same network; jdiff/cpu). Built for the count where only
  # Winograd is timed.
  direct = [kernels for kernels in ("eigen", "ynn", PLAIN) if kernels in program_flops]
  if direct:
    flops = program_flops[direct[0]]
  else:
    flops = _jdiff_calls(config, mesh, batch_sizes, train_batch, np.random.default_rng(0), "",
                         compute_for(config, "eigen"))[1]
  for b in batch_sizes:
    x, t = inputs[b]
    x_torch, t_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(t)

    def torch_forward(x=x_torch, t=t_torch):
      peer.eval()
      with torch.no_grad():
        return peer(x, t).sample
    calls[f"torch forward {b}"] = torch_forward
  torch_step = make_torch_train_step(peer, config, T)
  torch_images = torch.from_numpy(
      (np.asarray(images, np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy())

  def torch_train():
    peer.train()
    return torch_step(torch_images)
  calls["torch train"] = torch_train

  calls_per_sample = {name: -(-min_images_per_sample // sizes[what]) if what != "train" else 1
                      for name in calls for what in sizes if name.endswith(" " + what)}
  times = timing.interleaved_rounds(
      {name: _repeated(call, calls_per_sample[name]) for name, call in calls.items()},
      num_rounds, warmup_rounds)
  times = {name: [t / calls_per_sample[name] for t in samples] for name, samples in times.items()}
  rows = []
  for what in [f"forward {b}" for b in batch_sizes] + ["train"]:
    p = times[f"torch {what}"]
    for kernels in kernel_libraries:
      j = times[f"jdiff [{kernels}] {what}"]
      rows.append({
          "what": what, "cpu_convolutions": kernels, "batch": sizes[what],
          "gflop_per_image": flops[what] / sizes[what] / 1e9,
          "program_gflop_per_image": program_flops[kernels][what] / sizes[what] / 1e9,
          "jdiff_images_per_s": sizes[what] / float(np.median(j)),
          "torch_images_per_s": sizes[what] / float(np.median(p)),
          "jdiff_gflop_per_s": flops[what] / float(np.median(j)) / 1e9,
          "torch_gflop_per_s": flops[what] / float(np.median(p)) / 1e9,
          "speed_ratio": timing.ratio_stats(p, j),  # jdiff speed / torch speed, per round
          "calls_per_sample": calls_per_sample[f"torch {what}"],
          "jdiff_s": j, "torch_s": p})
  results = {"device": "cpu", "threads": threads, "torch": torch.__version__,
             "jax": jax.__version__, "num_rounds": num_rounds, "warmup_rounds": warmup_rounds,
             "jdiff_params": int(jdiff_params),
             "torch_params": int(torch_params), "cpu_convolutions": list(kernel_libraries),
             "rows": rows}
  report.write_json(os.path.join(workdir, "bench_torch.json"), results)
  report.print_table(
      rows,
      [report.Column("what", "what"), report.Column("jdiff kernels", "cpu_convolutions"),
       report.Column("batch", "batch"),
       report.Column("GFLOP/img", "gflop_per_image", ".2f"),
       report.Column("jdiff img/s", "jdiff_images_per_s", ".2f"),
       report.Column("torch img/s", "torch_images_per_s", ".2f"),
       report.Column("jdiff / torch", lambda r: r["speed_ratio"],
                     lambda s: f"{s['median']:.2f} ({s['min']:.2f}..{s['max']:.2f})"),
       report.Column("jdiff GFLOP/s", "jdiff_gflop_per_s", ".1f"),
       report.Column("torch GFLOP/s", "torch_gflop_per_s", ".1f")],
      title=(f"jdiff (jax {jax.__version__}) vs PyTorch {torch.__version__} diffusers UNet2DModel, "
             f"CPU, {threads} threads; median of {num_rounds} alternated rounds; params "
             f"{jdiff_params} / {torch_params}"),
      notes=["GFLOP/img: XLA's count of the network's program with direct convolutions "
             "(cpu.convolutions=eigen); GFLOP/s of both on it",
             "jdiff kernels: its cpu.convolutions (Winograd F(2x2,3x3) for the large 3x3 "
             "convolutions, or XLA:CPU's Eigen or YNNPACK convolutions)",
             f"a forward of batch b: ceil({min_images_per_sample} / b) calls per timed sample, "
             "time per call",
             "a shared machine: read the per-round ratio, not the absolute numbers"])
  return results


@cli.one_line_errors
def main(argv):
  del argv
  config = cli.load_config(FLAGS["config"])
  compute_lib.start(config)  # as --mode runs do (PyTorch shares the heap)
  workdir = FLAGS.workdir or "/tmp/bench_torch"
  os.makedirs(workdir, exist_ok=True)
  if FLAGS.warmup_rounds < 0 or FLAGS.rounds < 1:
    raise errors.ConfigError(f"--rounds={FLAGS.rounds}, --warmup_rounds={FLAGS.warmup_rounds}: "
                             "need rounds >= 1 and warmup_rounds >= 0")
  if FLAGS.min_images_per_sample < 1:
    raise errors.ConfigError(f"--min_images_per_sample={FLAGS.min_images_per_sample}: need >= 1")
  for kernels in FLAGS.cpu_convolutions:
    if kernels not in choices.CPU_CONVOLUTIONS + (PLAIN,):
      raise errors.ConfigError(f"--cpu_convolutions={kernels!r}: must be a list from "
                               f"{list(choices.CPU_CONVOLUTIONS + (PLAIN,))}")
  run(config, workdir, [int(b) for b in FLAGS.batch_sizes], FLAGS.train_batch, FLAGS.rounds,
      FLAGS.threads, FLAGS.cpu_convolutions, FLAGS.warmup_rounds, FLAGS.min_images_per_sample)


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", "configs/cifar10_ddpm.py", "The U-Net's config.")
  flags.DEFINE_string("workdir", None, "Where bench_torch.json goes (default /tmp/bench_torch).")
  app.run(main, flags_parser=cli.parse_flags)
