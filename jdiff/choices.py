"""The names a config field may take, in one import-free module.

The modules that implement them (schedules, diffusion, objectives, sampling, depth, models)
take their tuples from here, and config_lib validates against the same tuples without
importing jax: a bad flag is reported before anything heavy loads.
"""

# schedules.py
BETA_SCHEDULES = ("linear", "cosine")
RESPACINGS = ("even", "ddim")             # respaced: round(linspace(0, T-1, K)) | one stride
STEP_SCHEDULES = ("uniform", "quadratic")  # DDIM / FastDPM-STEP step selection
VAR_SCHEDULES = ("linear", "quadratic")    # FastDPM-VAR noise-level selection

# diffusion.py
VARIANCE_TYPES = ("fixedlarge", "fixedsmall", "learned_range")

# objectives.py
LOSSES = ("simple", "hybrid", "iwdiff")
TIMESTEP_SAMPLERS = ("uniform", "loss_aware")

# sampling.py
SAMPLERS = ("ancestral", "respaced", "ddim", "fastdpm")
FASTDPM_KINDS = ("var", "step")

# depth.py
DEPTH_TRAINING_SCHEMES = ("full", "random", "bucketed")

# models/
MODEL_KINDS = ("unet", "sngan", "diffwave")
SKIP_TYPES = ("zero", "duplicate", "interpolate")
BLOCK_TYPES = ("res", "mbconv")
PRECISIONS = ("float32", "bfloat16")

# data.py
TFDS_SOURCES = ("cifar10", "mnist", "fashion_mnist", "celeb_a")
LOCAL_SOURCES = ("folder", "npz", "idx")
AUDIO_SOURCES = ("sc09", "ljspeech")    # data.kind=audio (also "folder": WAVs or a .tar.gz)
DATA_SOURCES = ("digits",) + TFDS_SOURCES + LOCAL_SOURCES + AUDIO_SOURCES
DATA_KINDS = ("image", "audio")

# evaluation
EVALUATION_METRICS = ("fid", "is", "kid", "digits_fd", "bpd", "sc09_fd")  # sc09_fd: audio
SURROGATE_KINDS = ("none", "sngan", "ddpm")
BENCH_KINDS = ("core", "depth", "samplers", "precision")
BENCH_SAMPLER_FAMILIES = ("ddpm", "respaced", "ddim", "fastdpm", "surrogate")

# main.py
MODES = ("train", "sample", "evaluate", "reference_stats", "summary", "bench")
