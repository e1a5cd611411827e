"""Reference nearest-neighbour distances (the kNN cue's search, PatchCore's patch distance)."""
import torch

# distance-matrix block size: 4M floats (16 MB) of scores at a time, whatever Q and M are
BLOCK_ELEMENTS = 1 << 22


def nearest_distances(queries, memory, max_elements=BLOCK_ELEMENTS):
    """Euclidean distance of each row of ``queries [Q, D]`` to its nearest row of ``memory [M, D]``.

    The nearest row is found block by block (the score matrix stays bounded) on mean-centred
    vectors (less cancellation): within a query row, ranking by ``|m|^2 - 2 q.m`` is ranking
    by distance, so one GEMM per block with the memory's squared norms as its bias ranks the
    block (``torch.cdist`` computes the same matmul form plus a square root and ``|q|^2`` over
    the block).  The distance to the row found is then recomputed directly, so a query equal
    to a memory row scores 0, and the result is differentiable in both inputs.

    Returns ``[Q]`` in the inputs' dtype.  ``memory`` must not be empty.
    """
    if memory.shape[0] == 0:
        raise RuntimeError("the memory bank is empty: call fit() first")
    mu = memory.mean(0, keepdim=True)
    centred = memory - mu
    sq_norms = centred.square().sum(1)
    q_chunk = max(1, min(queries.shape[0], 4096))
    m_chunk = max(1, max_elements // q_chunk)
    out = []
    for q in torch.split(queries, q_chunk):
        qc = q - mu
        best, best_idx = None, None
        for start in range(0, memory.shape[0], m_chunk):
            block = centred[start:start + m_chunk]
            d, i = torch.addmm(sq_norms[start:start + m_chunk], qc, block.T, alpha=-2).min(dim=1)
            i = i + start
            if best is None:
                best, best_idx = d, i
            else:
                better = d < best
                best = torch.where(better, d, best)
                best_idx = torch.where(better, i, best_idx)
        out.append(torch.linalg.vector_norm(q - memory[best_idx], dim=1))
    if not out:
        return queries.new_zeros((0,))
    return torch.cat(out)
