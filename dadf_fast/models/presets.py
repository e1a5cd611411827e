"""Model presets (see DESIGN.md)."""

PRESETS = {
    "paper": dict(backbone="wide_resnet50_2", embed_dim=480, depth=8, num_heads=8, flow_steps=8,
                  flow_norm="image", flow_subnet="depthwise", flow_input="concat", score_scales=(0, 1, 2),
                  smooth_sigma=0.0, score_cues=("flow",)),
    # lite: FastFlow-width flows (full 3x3/1x1 subnets) on the features at all three scales,
    # scored together with the kNN patch distance and, at a quarter weight, the dual-attention
    # reconstruction error, each calibrated on the normal training images (docs/accuracy.md)
    "lite": dict(backbone="efficientnet_lite0", embed_dim=64, depth=4, num_heads=4, flow_steps=8,
                 flow_norm="image", flow_subnet="conv", flow_input="features", score_scales=(0, 1, 2),
                 smooth_sigma=4.0, score_cues=("flow", "recon", "knn"), cue_weights=(1.0, 0.25, 1.0)),
}
PATCH_SIZES = (4, 2, 1)
