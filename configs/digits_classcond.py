"""Class-conditional digits with classifier-free guidance (Ho & Salimans 2021), on CPU in minutes.

The quickstart's DDPM on scikit-learn's 8x8 digits, told each digit's class (a label embedding
added to the timestep embedding); 10% of the labels are dropped during training so that the same
network learns the unconditional model guidance needs.

  python -m jdiff.main --config=configs/digits_classcond.py --workdir=workdirs/digits_classcond \
      --mode=train
  python -m jdiff.main --config=configs/digits_classcond.py --workdir=workdirs/digits_classcond \
      --mode=sample --config.sampling.guidance=1.0

Expected on 2 CPU cores: training (2500 steps, batch 64) in about 5 minutes; the grid
(workdirs/digits_classcond/samples/grid.png) has one row per class, 0 at the top, with each row's
digits of its class. How often jdiff's digits classifier recognises the requested class, by
guidance w: docs/methods/conditioning.md (python -m jdiff.tools.guidance_table).

--config=configs/digits_classcond.py:tiny is the same run shrunk to seconds (the tests' variant).
"""

import os

from jdiff import config_lib


def get_config(variant: str = ""):
  config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "quickstart.py"))
  config.data.label_key = "label"   # sklearn's digit targets
  config.model.num_classes = 10
  config.training.p_uncond = 0.1    # Ho & Salimans: 0.1 or 0.2
  config.sampling.guidance = 1.0    # w; 0: the conditional model alone
  config.sampling.num_samples = 100  # 10 per class: one grid row each
  config.sampling.batch_size = 100
  return config_lib.apply_variant(config, variant)
