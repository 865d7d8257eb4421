"""Where a vocoder loses the voicing: its reverse chain started from its source clips noised to t.

  python docs/results/audio_cpu/voicing_by_start.py --config=configs/sc09_vocoder_cpu.py \
      --workdir=workdirs/sc09_vocoder_cpu --starts=0,10,25,50,100,200

For each start t (1-based; t = T is ordinary sampling from noise, t = 0 returns the clips), the
first --num_clips clips of sampling.mel_split are noised with q(x_t | x_0) and the sampler of the
config runs the remaining steps, conditioned on each clip's own mel (sampling.surrogate_sample
with the clips as the "surrogate", i.e. SDEdit). Prints each start's median voicing
(jdiff.audio.periodicity) of the outputs, and of the noised clips the chain starts from (what the
net's denoising has to recover). If outputs from small t stay voiced and
those from large t do not, the net denoises speech but cannot yet commit to a pitch from its mel.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jdiff import audio, builders, data as data_lib, diffusion as diffusion_lib, parallel, sampling
from jdiff import conditioning
from jdiff.tools import report

config_flags.DEFINE_config_file("config", None, "The vocoder's config file.")
flags.DEFINE_string("workdir", None, "Where it was trained.")
flags.DEFINE_list("starts", ["0", "10", "25", "50", "100", "200"], "1-based start steps t.")
flags.DEFINE_integer("num_clips", 8, "Clips (one batch).")
flags.DEFINE_string("out", "", "JSON file for the table (default: print only).")


def main(_):
  config = flags.FLAGS.config
  count, rate = flags.FLAGS.num_clips, config.data.sample_rate
  clips = data_lib.to_float(conditioning.conditioning_clips(config, count))
  mel = conditioning.mel_of(config, clips)
  model = builders.build_model(config)
  diffusion = builders.build_diffusion(config)
  params, step = builders.restore_ema_params(config, flags.FLAGS.workdir, model,
                                             parallel.make_mesh())
  plan = builders.build_plan(config, diffusion)
  model_fn = builders.make_model_fn(model, params, cond={"mel": mel})
  rows = []
  for start in (int(s) for s in flags.FLAGS.starts):
    rng = jax.random.fold_in(jax.random.key(config.seed), start)
    noise = jax.random.normal(jax.random.fold_in(rng, 1), clips.shape)
    out = sampling.surrogate_sample(plan, model_fn, lambda key: clips, start,
                                    config.diffusion.num_timesteps, noise, rng)
    out = np.clip(np.asarray(out)[..., 0], -1.0, 1.0)
    if start == 0 or start >= config.diffusion.num_timesteps:  # the clips / the prior's x_T
      noised = clips if start == 0 else noise
    else:
      noised = diffusion_lib.q_sample(diffusion, clips, jnp.full((count,), start - 1), noise)
    rows.append({"start_t": start, "voicing_median": float(np.median(audio.periodicity(out, rate))),
                 "noised_voicing_median": float(np.median(audio.periodicity(
                     np.asarray(noised)[..., 0], rate))),
                 "peak_median": float(np.median(np.max(np.abs(out), axis=1)))})
    print(json.dumps(rows[-1]), flush=True)
  result = {"checkpoint_step": step, "sampler": config.sampling.name,
            "variance_type": config.diffusion.variance_type, "num_clips": count,
            "source_voicing_median": float(np.median(audio.periodicity(np.asarray(clips), rate))),
            "rows": rows}
  print(json.dumps(result, indent=1))
  if flags.FLAGS.out:
    report.write_json(flags.FLAGS.out, result)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
