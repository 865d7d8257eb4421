"""Networks: the DDPM U-Net with shortcut depth (unet.py, layers.py), the SNGAN (gan.py) and the
Table 4.3 presets (presets.py). jdiff.builders builds them from a config."""
