"""The architectures of Table 4.3 of the HSE coursework "Diffusion Generative Models", selectable by config.model.preset.

A preset sets the four fields that the table varies (block type, channel multipliers, residual
blocks per resolution, base channels); everything else (attention at 16x16, dropout, groups)
stays the config's. The preset wins over values set for those fields: jdiff.builders builds the
model from config_lib.resolved_model_config (a copy; the config keeps what the user wrote).
Imports nothing, so config validation can read the names.
"""

PRESETS = {
    "Default": dict(block_type="res", ch_mult=(1, 2, 2, 2), num_res_blocks=2, ch=128),
    "DeepRes1": dict(block_type="res", ch_mult=(1, 2, 2, 2), num_res_blocks=1, ch=128),
    "ShallowRes2": dict(block_type="res", ch_mult=(1, 2, 2), num_res_blocks=2, ch=128),
    "ShallowRes1": dict(block_type="res", ch_mult=(1, 2, 2), num_res_blocks=1, ch=128),
    "MBConv64": dict(block_type="mbconv", ch_mult=(1, 2, 2, 2), num_res_blocks=2, ch=64),
    "MBConv96": dict(block_type="mbconv", ch_mult=(1, 2, 2, 2), num_res_blocks=2, ch=96),
}

# Table 4.3's "Parameters, M" column (CIFAR-10, 32x32), for comparison with ours.
PAPER_PARAMETERS_M = {
    "Default": 34.21, "DeepRes1": 23.27, "ShallowRes2": 24.76, "ShallowRes1": 17.02,
    "MBConv64": 11.51, "MBConv96": 25.68,
}
