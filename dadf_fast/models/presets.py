"""Model presets (see DESIGN.md)."""

PRESETS = {
    "paper": dict(backbone="wide_resnet50_2", embed_dim=480, depth=8, num_heads=8, flow_steps=8,
                  flow_norm="image", flow_subnet="depthwise", flow_input="concat", score_scales=(0, 1, 2),
                  smooth_sigma=0.0),
    # lite normalises the flow inputs per position, scores with the stride-8/16 flows and
    # smooths the map (docs/accuracy.md)
    "lite": dict(backbone="efficientnet_lite0", embed_dim=64, depth=4, num_heads=4, flow_steps=8,
                 flow_norm="channel", flow_subnet="depthwise", flow_input="concat", score_scales=(1, 2),
                 smooth_sigma=4.0),
}
PATCH_SIZES = (4, 2, 1)
