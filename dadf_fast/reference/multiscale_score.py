"""Reference multi-scale anomaly scoring."""
import torch
import torch.nn.functional as F


def multiscale_score(zs, out_size, reduce="max"):
    """Anomaly map and image score from per-scale flow latents.

    Per scale ``p = exp(-0.5 * mean_c z^2)`` (``[B,1,h,w]``), bilinearly upsampled
    (``align_corners=False``) to ``out_size``; ``map = 1 - mean over scales of p``.

    float16/bfloat16 latents are scored in float32 (``z^2`` overflows float16 from
    ``|z| > 256``) and the outputs rounded once to the input dtype.

    Args:
        zs: list of ``[B, C_s, h_s, w_s]`` latents.
        out_size: int or ``(H, W)``.
        reduce: ``"max"`` (image score = max of the map) or ``"mean"``.
    Returns:
        ``(anomaly_map [B, 1, H, W], score [B])``.
    """
    if isinstance(out_size, int):
        out_size = (out_size, out_size)
    dtype = zs[0].dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    total = None
    for z in zs:
        z = z.to(acc)
        p = torch.exp(-0.5 * z.pow(2).mean(dim=1, keepdim=True))
        p = F.interpolate(p, size=tuple(out_size), mode="bilinear", align_corners=False)
        total = p if total is None else total + p
    amap = 1.0 - total / len(zs)
    flat = amap.flatten(1)
    score = flat.amax(dim=1) if reduce == "max" else flat.mean(dim=1)
    return amap.to(dtype), score.to(dtype)
