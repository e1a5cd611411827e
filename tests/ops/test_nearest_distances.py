"""nearest_distances: the kNN cue's exact nearest-neighbour search (reference: a blocked GEMM;
cpp: a search pruned by a lower bound from the memory's principal directions, csrc/cpu/
nearest_index.cpp).  Random inputs are in test_fuzz_valid.py; here the sizes that cross the
kernel's tiles (1024 queries x 1024 memory rows), data where the bound prunes (structured,
low-rank plus noise) and where it cannot (isotropic noise), the memory index cache, opcheck
and torch.compile."""
from __future__ import annotations

import pytest
import torch

from dadf_fast import ops, reference

OP = "nearest_distances"


def brute_force(queries, memory):
    d = torch.cdist(queries.double(), memory.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return d.min(1).values


def structured(n, d, rank, gen, noise=0.05, offset=3.0):
    """Rows near a ``rank``-dimensional subspace (how CNN patch embeddings sit: most of the
    variance in a few directions), away from the origin."""
    basis = torch.randn(rank, d, generator=gen, dtype=torch.float64)
    return (torch.randn(n, rank, generator=gen, dtype=torch.float64) @ basis
            + noise * torch.randn(n, d, generator=gen, dtype=torch.float64) + offset)


@pytest.fixture
def cpp_ops(require_backend):
    require_backend("cpp")
    from dadf_fast.kernels.cpp import knn_index, ops as cpp

    knn_index.clear_cache()
    yield cpp
    knn_index.clear_cache()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("q,m,d,rank", [(1500, 2300, 37, 6), (7, 1025, 152, 40), (1025, 3, 5, 2), (33, 4100, 70, 70)],
                         ids=["tiles", "one-query-tile", "tiny-memory", "full-rank"])
def test_cpp_matches_brute_force_across_tiles(cpp_ops, dtype, q, m, d, rank):
    gen = torch.Generator().manual_seed(q + m + d)
    memory = structured(m, d, rank, gen)
    queries = torch.cat((structured(q - q // 4, d, rank, gen), memory[torch.randperm(m, generator=gen)[: q // 4]]))
    got = ops.nearest_distances(queries.to(dtype), memory.to(dtype), backend="cpp")
    want = reference.nearest_distances(queries.to(dtype), memory.to(dtype))
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(got.double(), brute_force(queries.to(dtype), memory.to(dtype)), **tol)
    torch.testing.assert_close(got, want, **tol)
    # the copied memory rows are found exactly
    assert float(got[q - q // 4:].abs().max()) == 0.0


def test_cpp_is_exact_where_the_bound_cannot_prune(cpp_ops):
    """Isotropic noise: the 32 leading directions hold a fifth of the variance, the bound is
    loose and most rows are checked exactly: slower than the reference, never wrong."""
    gen = torch.Generator().manual_seed(0)
    memory = torch.randn(1500, 64, generator=gen)
    queries = torch.randn(300, 64, generator=gen)
    torch.testing.assert_close(ops.nearest_distances(queries, memory, backend="cpp").double(),
                               brute_force(queries, memory), atol=2e-5, rtol=2e-5)


def test_cpp_gradients_match_the_reference(cpp_ops):
    gen = torch.Generator().manual_seed(1)
    memory = structured(300, 19, 4, gen).requires_grad_()
    queries = structured(50, 19, 4, gen).requires_grad_()
    up = torch.randn(50, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((ops.nearest_distances(queries, memory, backend="cpp") * up).sum(), (queries, memory))
    want = torch.autograd.grad((reference.nearest_distances(queries, memory) * up).sum(), (queries, memory))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def test_non_finite_queries_give_nan_like_the_reference(cpp_ops):
    memory = torch.randn(40, 6)
    queries = torch.randn(5, 6)
    queries[2, 3] = float("nan")
    got = ops.nearest_distances(queries, memory, backend="cpp")
    want = reference.nearest_distances(queries, memory)
    assert torch.isnan(got[2]) and torch.isnan(want[2])
    keep = torch.tensor([0, 1, 3, 4])
    torch.testing.assert_close(got[keep], want[keep])


def test_memory_index_is_cached_per_storage_and_version(cpp_ops, monkeypatch):
    from dadf_fast.kernels.cpp import knn_index

    builds = []
    real = knn_index.build_index
    monkeypatch.setattr(knn_index, "build_index", lambda m: builds.append(1) or real(m))
    gen = torch.Generator().manual_seed(2)
    memory = structured(500, 12, 3, gen).float()
    queries = structured(20, 12, 3, gen).float()
    ops.nearest_distances(queries, memory, backend="cpp")
    ops.nearest_distances(queries, memory.detach(), backend="cpp")  # same storage, same version: a hit
    assert len(builds) == 1
    memory.mul_(2.0)  # in place: the version counter moves, the index is rebuilt
    torch.testing.assert_close(ops.nearest_distances(queries, memory, backend="cpp"),
                               reference.nearest_distances(queries, memory))
    assert len(builds) == 2
    ops.nearest_distances(queries, memory[:250], backend="cpp")  # another view: its own index
    assert len(builds) == 3
    with torch.inference_mode():
        frozen = memory.clone()
    torch.testing.assert_close(ops.nearest_distances(queries, frozen, backend="cpp"),
                               reference.nearest_distances(queries, frozen))
    assert len(builds) == 4  # inference tensors have no version counter: never cached


def test_index_is_an_orthonormal_basis_and_exact_norms(cpp_ops):
    from dadf_fast.kernels.cpp import knn_index

    gen = torch.Generator().manual_seed(3)
    memory = structured(400, 50, 8, gen)
    mean, basis, bound_t, sqnorm = knn_index.build_index(memory)
    k = knn_index.PROJECTION_DIMS
    assert basis.shape == (50, k) and bound_t.shape == (k + 1, 400)
    torch.testing.assert_close(basis.T @ basis, torch.eye(k, dtype=torch.float64), atol=1e-12, rtol=0)
    centred = memory - memory.mean(0)
    torch.testing.assert_close(sqnorm, centred.square().sum(1), atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(bound_t.square().sum(0), sqnorm, atol=1e-9, rtol=1e-12)


def test_opcheck_cpp(cpp_ops):
    gen = torch.Generator().manual_seed(4)
    memory = structured(90, 11, 3, gen).float()
    queries = structured(13, 11, 3, gen).float()
    from dadf_fast.kernels.cpp import knn_index

    torch.library.opcheck(torch.ops.dadf_fast.nearest_index.default, (queries, memory))
    torch.library.opcheck(torch.ops.dadf_fast.nearest_index_bounded.default,
                          (queries, memory, *knn_index.build_index(memory)))


def test_cpp_kernel_rejects_inconsistent_index(cpp_ops):
    from dadf_fast.kernels.cpp import knn_index

    memory, queries = torch.randn(20, 6), torch.randn(4, 6)
    mean, basis, bound_t, sqnorm = knn_index.build_index(memory)
    with pytest.raises(ValueError, match="memory_bound_t must be"):
        torch.ops.dadf_fast.nearest_index_bounded(queries, memory, mean, basis, bound_t[:, :5], sqnorm)
    with pytest.raises(TypeError, match="memory has dtype"):
        torch.ops.dadf_fast.nearest_index_bounded(queries, memory.double(), mean, basis, bound_t, sqnorm)


def test_torch_compile_fullgraph(cpp_ops):
    import torch._dynamo

    gen = torch.Generator().manual_seed(5)
    memory = structured(200, 9, 3, gen).float()
    queries = structured(31, 9, 3, gen).float()

    def step(q, m):
        return ops.nearest_distances(q, m, backend="cpp").sum()

    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(queries, memory)
    torch.testing.assert_close(got, step(queries, memory))
    torch._dynamo.reset()


def test_auto_on_cpu_is_the_cpp_search(require_backend):
    require_backend("cpp")
    assert ops.selected_backend(OP, "auto", "cpu", torch.float32) == "cpp"
    assert ops.selected_backend(OP, "auto", "cpu", torch.float16) == "torch"


def test_reference_rows_equal_to_memory_score_zero():
    memory = torch.randn(64, 10) + 100.0
    assert float(reference.nearest_distances(memory[5:9], memory).abs().max()) == 0.0
    assert float(reference.nearest_distances(memory[5:9], memory, max_elements=7).abs().max()) == 0.0
