"""Model presets (see DESIGN.md)."""

PRESETS = {
    "paper": dict(backbone="wide_resnet50_2", embed_dim=480, depth=8, num_heads=8, flow_steps=8),
    "lite": dict(backbone="efficientnet_lite0", embed_dim=64, depth=4, num_heads=4, flow_steps=8),
}
PATCH_SIZES = (4, 2, 1)
