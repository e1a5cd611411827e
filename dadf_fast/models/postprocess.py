"""Post-processing of anomaly maps."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dadf_fast.utils.checks import check_number


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[B, 1, H, W]`` maps (separable, truncated at 4 sigma, reflect padding);
    ``sigma`` must be a finite number >= 0 (0: the maps unchanged)."""
    sigma = check_number("gaussian_smooth", "sigma", sigma, nonnegative=True)
    if not sigma:
        return maps
    radius = int(4 * sigma + 0.5)
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    out = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
