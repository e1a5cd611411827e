"""Pure-torch reference implementations: the source of truth every fast backend is tested
against.  Plain, readable torch that follows the official DADF / FrEIA computation (the hard
permutation as a gather, which equals FrEIA's dense 0/1 convolution on finite input and keeps
a non-finite value in its channel).  This package imports nothing else from ``dadf_fast``.
"""
from dadf_fast.reference.affine_coupling import affine_coupling, permutation_matrix
from dadf_fast.reference.dual_attention import dual_attention
from dadf_fast.reference.flow_nll import flow_nll
from dadf_fast.reference.multiscale_score import multiscale_score
from dadf_fast.reference.nearest_distances import nearest_distances

__all__ = ["dual_attention", "affine_coupling", "permutation_matrix", "flow_nll", "multiscale_score", "nearest_distances"]
