// CPU kernel of the exact nearest-neighbour search of the kNN cue (dadf_fast.ops.nearest_distances):
// for every query row the index of its nearest memory row (Euclidean), found exactly but with
// most of the distance work pruned by a lower bound.
//
// The bound.  With an orthonormal basis P [D, k] of the memory's leading principal directions
// (the "index", built once per memory bank in Python, dadf_fast/kernels/cpp/knn_index.py), a
// centred vector c splits into its projection p = P^T c and a residual of norm r = |c - P p|.
// Pythagoras on both parts and the reverse triangle inequality on the residuals give
//
//     |q - m|^2 = |p_q - p_m|^2 + |res_q - res_m|^2 >= |p_q - p_m|^2 + (r_q - r_m)^2
//              = |c_q|^2 + |c_m|^2 - 2 ([p_q, r_q] . [p_m, r_m])
//
// i.e. one GEMM over k + 1 = 33 augmented coordinates instead of D = 152 gives a lower bound of
// every squared distance (21 % of the reference's GEMM).  A memory row needs its exact distance
// only where the bound is below the best exact distance found so far: on the pretrained
// lite0 embeddings of the harness that is 0.2-1.3 % of the rows (measured, docs/benchmarks.md).
//
// Tiling.  Query tiles of kQueryTile rows x memory chunks of kMemoryChunk rows: the bound
// block [1024 x 1024] floats (4 MB) is one multi-threaded addmm (the memory's squared norms as
// its bias); 1024 x 1024 ran the 33-deep GEMM at 102 GFLOP/s on the 2-core CI machine against
// 43-60 for taller or wider blocks (the block falls out of the caches, or MKL's panels are
// too thin).  Each row of the block is then scanned by one thread (at::parallel_for over the
// tile's rows; the scan is cpu/knn_rows.h, one copy per instruction set): first its smallest
// bound's exact distance (a tight running best from the first chunk on), then every entry
// below the running best.
//
// Rounding.  The bound is computed in the inputs' dtype; a row is pruned only when its bound
// exceeds the running best by kTolerance ulps of |c_q|^2 + max |c_m|^2, far more than the
// 33-term dot product and the float64-built index can be off, so rounding never prunes the
// nearest row.  Exact distances are direct sums of squared differences (no cancellation).
#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "dadf_common.h"
// after every library header (instruction-set regions):
#include "cpu/knn_kernels.h"

namespace dadf_fast {
namespace cpu {
namespace {

constexpr const char* kOp = "dadf_fast::nearest_index_bounded";
constexpr int64_t kQueryTile = 1024;
constexpr int64_t kMemoryChunk = 1024;
constexpr double kTolerance = 1024.0;  // in units of the dtype's epsilon

at::Tensor nearest_index_cpu(const at::Tensor& queries_, const at::Tensor& memory_, const at::Tensor& mean,
                             const at::Tensor& basis, const at::Tensor& memory_bound_t,
                             const at::Tensor& memory_sqnorm) {
  check_floating(queries_, kOp, "queries");
  check_like(memory_, queries_, kOp, "memory", "queries");
  check_like(memory_bound_t, queries_, kOp, "memory_bound_t", "queries");
  check_like(memory_sqnorm, queries_, kOp, "memory_sqnorm", "queries");
  TORCH_CHECK(queries_.device().is_cpu(), kOp, ": CPU kernel called with tensors on ", queries_.device());
  TORCH_CHECK_TYPE(queries_.scalar_type() == at::kFloat || queries_.scalar_type() == at::kDouble, kOp,
                   ": the CPU kernel supports float32 and float64, got ", queries_.scalar_type());
  TORCH_CHECK_VALUE(queries_.dim() == 2 && memory_.dim() == 2 && queries_.size(1) == memory_.size(1), kOp,
                    ": queries [Q, D] and memory [M, D] must be 2-D with the same D, got ", queries_.sizes(),
                    " and ", memory_.sizes());
  const int64_t Q = queries_.size(0), M = memory_.size(0), D = queries_.size(1);
  TORCH_CHECK_VALUE(M > 0, kOp, ": the memory is empty");
  TORCH_CHECK_VALUE(mean.dim() == 1 && mean.size(0) == D, kOp, ": mean must be [D] = [", D, "], got ", mean.sizes());
  TORCH_CHECK_VALUE(basis.dim() == 2 && basis.size(0) == D && basis.size(1) >= 1, kOp,
                    ": basis must be [D, k] with D = ", D, ", got ", basis.sizes());
  const int64_t K1 = basis.size(1) + 1;
  TORCH_CHECK_VALUE(memory_bound_t.dim() == 2 && memory_bound_t.size(0) == K1 && memory_bound_t.size(1) == M, kOp,
                    ": memory_bound_t must be [k + 1, M] = [", K1, ", ", M, "], got ", memory_bound_t.sizes());
  TORCH_CHECK_VALUE(memory_sqnorm.dim() == 1 && memory_sqnorm.size(0) == M, kOp,
                    ": memory_sqnorm must be [M] = [", M, "], got ", memory_sqnorm.sizes());
  at::Tensor index = at::zeros({Q}, queries_.options().dtype(at::kLong));
  if (Q == 0) return index;

  const at::Tensor queries = queries_.contiguous();
  const at::Tensor memory = memory_.contiguous();
  // the queries' augmented coordinates [p_q, r_q] and |c_q|^2, in float64 (as the index)
  const at::Tensor b64 = basis.to(at::kDouble);
  const at::Tensor qc = queries.to(at::kDouble) - mean.to(at::kDouble);
  const at::Tensor proj = qc.mm(b64);
  const at::Tensor resid = (qc - proj.mm(b64.t())).square().sum(1, true).sqrt();
  const at::Tensor qaug = at::cat({proj, resid}, 1).to(queries.scalar_type()).contiguous();
  const at::Tensor qnorm = (proj.square().sum(1) + resid.squeeze(1).square()).to(queries.scalar_type()).contiguous();
  const at::Tensor bias = memory_sqnorm.contiguous();
  at::Tensor best = at::full({Q}, std::numeric_limits<double>::infinity(), queries.options());
  at::Tensor buffer = at::empty({std::min(Q, kQueryTile) * std::min(M, kMemoryChunk)}, queries.options());

  AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "nearest_index_cpu", [&] {
    const scalar_t max_mnorm = bias.max().item<scalar_t>();
    const auto scan_row = scan_row_fn<scalar_t>();
    const scalar_t eps = std::numeric_limits<scalar_t>::epsilon();
    const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
    const scalar_t slack = static_cast<scalar_t>(kTolerance) * eps * max_mnorm;
    const scalar_t* qp = queries.data_ptr<scalar_t>();
    const scalar_t* mp = memory.data_ptr<scalar_t>();
    const scalar_t* qn = qnorm.data_ptr<scalar_t>();
    scalar_t* bp = best.data_ptr<scalar_t>();
    int64_t* ip = index.data_ptr<int64_t>();
    for (int64_t q0 = 0; q0 < Q; q0 += kQueryTile) {
      const int64_t tq = std::min(kQueryTile, Q - q0);
      const at::Tensor qtile = qaug.narrow(0, q0, tq);
      for (int64_t m0 = 0; m0 < M; m0 += kMemoryChunk) {
        const int64_t tm = std::min(kMemoryChunk, M - m0);
        at::Tensor s = buffer.narrow(0, 0, tq * tm).view({tq, tm});
        at::addmm_out(s, bias.narrow(0, m0, tm), qtile, memory_bound_t.narrow(1, m0, tm), 1, -2);
        const scalar_t* sp = s.data_ptr<scalar_t>();
        at::parallel_for(0, tq, 16, [&](int64_t begin, int64_t end) {
          for (int64_t t = begin; t < end; ++t) {
            const int64_t q = q0 + t;
            const scalar_t tol = static_cast<scalar_t>(kTolerance) * eps * qn[q] + slack;
            scan_row(sp + t * tm, tm, m0, qp + q * D, mp, D, qn[q], tol, inf, bp + q, ip + q);
          }
        });
      }
    }
  });
  return index;
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(dadf_fast, CPU, m) { m.impl("nearest_index_bounded", &cpu::nearest_index_cpu); }

}  // namespace dadf_fast
