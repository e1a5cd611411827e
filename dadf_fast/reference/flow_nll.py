"""Reference flow negative log-likelihood."""
import torch


def flow_nll(z, logdet):
    """Per-sample ``0.5 * ||z||^2 - logdet`` (the constant of the Gaussian is dropped).

    float16/bfloat16 inputs are accumulated in float32 and the result is rounded once to
    the input dtype (a sum of squares overflows float16 long before the result does).

    Args:
        z: ``[B, ...]`` latent; a 1-D ``[B]`` z is one value per sample.  logdet: ``[B]``.
    Returns:
        ``[B]`` in z's dtype.
    """
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    zz = z.to(acc)
    if zz.dim() == 1:
        zz = zz.unsqueeze(1)
    return (0.5 * zz.pow(2).flatten(1).sum(dim=1) - logdet.to(acc)).to(z.dtype)
