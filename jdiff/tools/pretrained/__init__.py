"""Pretrained weights in and out of jdiff (python -m jdiff.tools.import_weights; docs/pretrained.md).

One module per foreign format: diffusers_format (UNet2DModel folders, both ways), ddpm_tf (Ho et
al.'s TensorFlow checkpoints), diffwave_pt (the DiffWave reference code's PyTorch checkpoints);
common holds the strict weight mapping and the workdir writer; safetensors_io the file format.
"""
