"""The names a config field may take, in one import-free module.

The modules that implement them (schedules, diffusion, objectives, sampling, depth, models)
take their tuples from here, and config_lib validates against the same tuples without
importing jax: a bad flag is reported before anything heavy loads.
"""

import math

# The CPU backend's tuning (jdiff/cpu, config.cpu): freed host memory kept in the process for the
# next step (mallopt) | glibc's defaults
HOST_MEMORY = ("keep", "release")

# schedules.py
BETA_SCHEDULES = ("linear", "cosine")
RESPACINGS = ("even", "ddim")             # respaced: K evenly spaced | one stride; or "10,10,10"
STEP_SCHEDULES = ("uniform", "linear", "quadratic")  # DDIM / FastDPM-STEP step selection
VAR_SCHEDULES = ("linear", "quadratic")    # FastDPM-VAR noise-level selection
VAR_DOMAINS = ("reference", "full")        # FastDPM-VAR search domain: its code's | up to beta 1
# Multistep solvers (DPM-Solver, DPM-Solver++, UniPC): the official codes' step spacings (real
# steps, ending at step 0's noise level) and diffusers' timestep_spacing (integer steps, ending
# at sigma = 0 as its schedulers do).
OFFICIAL_SPACINGS = ("time_uniform", "logsnr", "time_quadratic")
DIFFUSERS_SPACINGS = ("linspace", "leading", "trailing")
SOLVER_SPACINGS = OFFICIAL_SPACINGS + DIFFUSERS_SPACINGS
SOLVER_ORDERS = (1, 2, 3)
UNIPC_VARIANTS = ("bh1", "bh2")            # B(h) = h | expm1(h)



def parse_section_counts(respacing: str):
  """sampling.respacing "10,10,10" -> (10, 10, 10) (improved-diffusion's sections); None when it
  is not a comma-separated list of positive counts."""
  parts = respacing.split(",")
  if not all(part.strip().isdigit() and int(part) > 0 for part in parts):
    return None
  return tuple(int(part) for part in parts)


# diffusion.py
VARIANCE_TYPES = ("fixedlarge", "fixedsmall", "learned_range")

# objectives.py
LOSSES = ("simple", "hybrid", "iwdiff")
IWDIFF_WEIGHTS = ("sum", "mean")           # softmax over Algorithm 3's l_i | per-pixel means
TIMESTEP_SAMPLERS = ("uniform", "loss_aware")

# sampling.py. The sampler names are the registry's: jdiff/samplers.py (samplers.names()).
CLIP_X0 = ("auto", "on", "off")           # auto: what the sampler's reference code does
FASTDPM_KINDS = ("var", "step")

# depth.py
DEPTH_TRAINING_SCHEMES = ("full", "random", "bucketed")
DEPTH_DISPATCHES = ("host", "switch")     # training: one program per depth | one lax.switch

# models/
MODEL_KINDS = ("unet", "sngan", "diffwave")
SKIP_TYPES = ("zero", "duplicate", "interpolate")
BLOCK_TYPES = ("res", "mbconv")
PRECISIONS = ("float32", "bfloat16")
# The CPU backend's convolutions (jdiff/cpu, config.cpu): which kernels XLA:CPU runs them with,
# and how their filter gradient is computed (jdiff/cpu/convolutions.py).
CPU_CONVOLUTIONS = ("winograd", "eigen", "ynn")
FILTER_GRADS = ("auto", "matmul", "xla")

# data.py
TFDS_SOURCES = ("cifar10", "mnist", "fashion_mnist", "celeb_a")
LOCAL_SOURCES = ("folder", "npz", "idx")
AUDIO_SOURCES = ("sc09", "ljspeech")    # data.kind=audio (also "folder": WAVs or a .tar.gz)
DATA_SOURCES = ("digits",) + TFDS_SOURCES + LOCAL_SOURCES + AUDIO_SOURCES
DATA_KINDS = ("image", "audio")


def mel_upsampler_stride(hop: int) -> int:
  """The stride s of each of DiffWave's two mel-upsampling transposed convs (hop = s * s with s
  even; the reference's 256 = 16 * 16), or 0 when `hop` is not such a square."""
  stride = math.isqrt(hop) if isinstance(hop, int) and hop > 0 else 0
  return stride if stride >= 2 and stride % 2 == 0 and stride * stride == hop else 0


# evaluation
EVALUATION_METRICS = ("fid", "is", "kid", "digits_fd", "bpd", "sc09_fd")  # sc09_fd: audio
# The default; when the Inception weights have no logits, "is" is dropped from it (with a log line).
DEFAULT_EVALUATION_METRICS = ("fid", "is", "kid")
FID_PREPROCESSINGS = ("tf1", "pytorch_fid")  # jdiff.evaluation.inception.fid_inception_input
SURROGATE_KINDS = ("none", "sngan", "ddpm")
BENCH_KINDS = ("core", "depth", "samplers", "precision")
# The halves of the depth bench (bench.depth_parts).
BENCH_DEPTH_PARTS = ("training", "sampling")
# The sampler bench's families: samplers.bench_families() ("ddpm", every other registered sampler,
# "surrogate").

# main.py
MODES = ("train", "sample", "evaluate", "reference_stats", "summary", "bench")
