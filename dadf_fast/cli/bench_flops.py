"""Per-stage FLOPs and coupling bytes per image (``dadf-fast bench --flops``; roofline inputs)."""
from __future__ import annotations

import torch


def stage_flops(preset: str = "lite", input_size: int = 256) -> dict:
    """Matmul/conv FLOPs per image of each stage (``torch.utils.flop_counter``, batch 1, the
    official computation; elementwise work is not counted).  ``flows`` counts the flows as
    FrEIA computes them, and ``flows_dense_perm`` is the part of it spent in FrEIA's dense
    permutation convolutions (counted analytically: the reference and the fast path apply the
    permutation as a gather, which has no FLOPs); ``stage1_train``/``stage2_train`` are forward +
    backward of the stage loss."""
    from torch.utils.flop_counter import FlopCounterMode

    from dadf_fast.models import DADF
    from dadf_fast.nn import reconstruction_loss

    torch.manual_seed(0)
    model = DADF(preset, pretrained=False, input_size=input_size, backend="torch").eval()
    x = torch.randn(1, 3, input_size, input_size)

    def count(fn):
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops()

    out = {}
    with torch.no_grad():
        feats = model.features(x)
        out["backbone"] = count(lambda: model.features(x))
        out["transformer"] = count(lambda: model.reconstruct(feats))
        local, glob = model.reconstruct(feats)
        inputs = model.flow_inputs(feats, local, glob)
        scored = model.config["score_scales"]
        out["flows_dense_perm"] = sum(2 * model.flows[s].channels ** 2 * inputs[s].shape[2] * inputs[s].shape[3]
                                      * len(model.flows[s].steps) for s in scored)
        out["flows"] = count(lambda: model.latents(feats, local, glob)) + out["flows_dense_perm"]
    f1 = [f.clone() for f in feats]
    out["stage1_train"] = count(lambda: reconstruction_loss(f1, *model.reconstruct(f1)).backward())
    out["stage2_train"] = count(lambda: model.flow_loss(inputs).backward())
    return out


def coupling_bytes(preset: str = "lite", input_size: int = 256, itemsize: int = 4) -> list:
    """Bytes per image the fused coupling epilogue must move per step and scale: read x
    ``[C,H,W]`` and a ``[2*(C//2),H,W]``, write y ``[C,H,W]`` (g, b, perm are negligible)."""
    from dadf_fast.models.presets import PRESETS

    name = PRESETS[preset]["backbone"]
    channels = {"efficientnet_lite0": (24, 40, 112), "wide_resnet50_2": (256, 512, 1024)}.get(name)
    out = []
    for c, s in zip(channels, (4, 8, 16)):
        cc, p = 3 * c, (input_size // s) ** 2
        out.append(dict(scale=s, channels=cc, pixels=p, bytes=itemsize * p * (cc + 2 * (cc // 2) + cc)))
    return out
