"""Reference flow negative log-likelihood."""


def flow_nll(z, logdet):
    """Per-sample ``0.5 * ||z||^2 - logdet`` (the constant of the Gaussian is dropped).

    Args:
        z: ``[B, ...]`` latent.  logdet: ``[B]``.
    Returns:
        ``[B]``.
    """
    return 0.5 * z.pow(2).flatten(1).sum(dim=1) - logdet
