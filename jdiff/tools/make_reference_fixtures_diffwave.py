"""Makes tests/fixtures/pretrained/diffwave_*tiny*: tiny models of the DiffWave reference code.

Builds WaveNet_Speech_Commands from the code FastDPM's audio experiments ran
(philsyn/DiffWave-unconditional: WaveNet.py and util.py, imported from --reference_repo,
unmodified), with tiny sizes (8 residual / skip channels, 4 layers, dilation cycle 2, step
embedding 16 -> 32 -> 32), random values in every parameter (the reference zero-initialises the
last conv), saves it the way its train.py does (torch.save({'model_state_dict': ...,
'optimizer_state_dict': ...}, '<iter>.pkl')) and records its outputs on fixed inputs.

  pip install torch==2.13.0 numpy
  git clone https://github.com/philsyn/DiffWave-unconditional /tmp/diffwave   # any checkout
  python jdiff/tools/make_reference_fixtures_diffwave.py --reference_repo=/tmp/diffwave \
      --out=tests/fixtures/pretrained

The one adaptation (here, not in the reference files): util.calc_diffusion_step_embedding moves
its frequencies to the GPU with .cuda(); on a CPU-only machine this script makes Tensor.cuda
return the tensor itself.

Writes diffwave_tiny/100.pkl, diffwave_tiny/config.json (the reference's config format) and
diffwave_tiny_outputs.npz: audio [2, 1, 64] (NCL), steps [2, 1] (one integer, one fractional
step: FastDPM feeds continuous steps), eps [2, 1, 64].

--variant=vocoder does the same with the LJSpeech vocoder's code (philsyn/DiffWave-Vocoder:
WaveNet_vocoder, mel-conditioned; its code fixes 80 mel bands and a 256x upsampler, 16 x 16):

  git clone https://github.com/philsyn/DiffWave-Vocoder /tmp/vocoder
  python jdiff/tools/make_reference_fixtures_diffwave.py --variant=vocoder \
      --reference_repo=/tmp/vocoder --out=tests/fixtures/pretrained

writing diffwave_vocoder_tiny/{100.pkl, config.json} and diffwave_vocoder_tiny_outputs.npz
(audio [2, 1, 512], mel [2, 80, 2], steps, eps).
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch

WAVENET = dict(in_channels=1, res_channels=8, skip_channels=8, out_channels=1, num_res_layers=4,
               dilation_cycle=2, diffusion_step_embed_dim_in=16, diffusion_step_embed_dim_mid=32,
               diffusion_step_embed_dim_out=32)
DIFFUSION = {"T": 200, "beta_0": 0.0001, "beta_T": 0.02}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference_repo", required=True,
                      help="a checkout of github.com/philsyn/DiffWave-unconditional")
  parser.add_argument("--out", default="tests/fixtures/pretrained")
  parser.add_argument("--variant", default="unconditional", choices=["unconditional", "vocoder"])
  args = parser.parse_args()
  vocoder = args.variant == "vocoder"

  torch.Tensor.cuda = lambda self, *unused_args, **unused_kwargs: self  # CPU only
  sys.path.insert(0, os.path.abspath(args.reference_repo))
  import WaveNet  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  wavenet = dict(WAVENET, num_res_layers=2) if vocoder else WAVENET
  net = (WaveNet.WaveNet_vocoder if vocoder else WaveNet.WaveNet_Speech_Commands)(**wavenet).eval()
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name.endswith("weight_g"):
        p.copy_(torch.rand_like(p) + 0.5)
      elif p.ndim > 1:
        p.copy_(torch.randn_like(p) / np.sqrt(p[0].numel()))
      else:
        p.copy_(torch.randn_like(p) * 0.3)
  optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)

  name = "diffwave_vocoder_tiny" if vocoder else "diffwave_tiny"
  out = os.path.join(args.out, name)
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)
  torch.save({"model_state_dict": net.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
             os.path.join(out, "100.pkl"))
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"diffusion_config": DIFFUSION, "wavenet_config": wavenet}, f, indent=4)

  rng = np.random.RandomState(0)
  audio = rng.randn(2, 1, 512 if vocoder else 64).astype(np.float32)
  steps = np.array([[3.0], [117.5]], np.float32)
  arrays = dict(audio=audio, steps=steps)
  with torch.no_grad():
    if vocoder:
      arrays["mel"] = rng.randn(2, 80, 2).astype(np.float32)
      eps = net((torch.from_numpy(audio), torch.from_numpy(arrays["mel"]),
                 torch.from_numpy(steps))).numpy()
    else:
      eps = net((torch.from_numpy(audio), torch.from_numpy(steps))).numpy()
  np.savez(os.path.join(args.out, f"{name}_outputs.npz"), eps=eps, **arrays)
  print(sorted(net.state_dict())[:6])
  for name in sorted(os.listdir(out)):
    print(name, os.path.getsize(os.path.join(out, name)), "bytes")


if __name__ == "__main__":
  main()
