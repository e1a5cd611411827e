// CPU kernels of the per-sample flow negative log-likelihood 0.5*sum(z^2) - logdet.
//
// One pass over z: each sample is cut into fixed-size chunks (independent of the thread
// count), every chunk's sum of squares is accumulated in double, and the chunks of a sample
// are added in order, so the result is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "dadf_common.h"
// after every library header (instruction-set regions):
#include "cpu/score_kernels.h"

namespace dadf_fast {
namespace cpu {
namespace {

constexpr const char* kFwd = "dadf_fast::flow_nll_fwd";
constexpr const char* kBwd = "dadf_fast::flow_nll_bwd";
constexpr int64_t kChunk = 32768;  // elements per parallel task (fixed: deterministic sums)

void check_cpu_dtype(const char* op, const at::Tensor& z) {
  TORCH_CHECK(z.device().is_cpu(), op, ": CPU kernel called with tensors on ", z.device());
  TORCH_CHECK_TYPE(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble, op,
                   ": the CPU kernel supports float32 and float64, got ", z.scalar_type());
}

template <typename T>
void nll_forward_kernel(const T* zp, const T* ld, T* o, int64_t B, int64_t N) {
  const int64_t chunks = std::max<int64_t>(1, (N + kChunk - 1) / kChunk);
  const auto fns = score_fns<T>();
  std::vector<double> part(static_cast<size_t>(B * chunks), 0.0);
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, k = task % chunks;
      const int64_t lo = k * kChunk, hi = std::min(N, lo + kChunk);
      part[task] = fns.sum_squares(zp + n * N + lo, hi - lo);
    }
  });
  for (int64_t n = 0; n < B; ++n) {
    double acc = 0.0;
    for (int64_t k = 0; k < chunks; ++k) acc += part[n * chunks + k];  // fixed order
    o[n] = static_cast<T>(0.5 * acc - static_cast<double>(ld[n]));
  }
}

template <typename T>
void nll_backward_kernel(const T* gp, const T* zp, T* gzp, T* glp, int64_t B, int64_t N) {
  const int64_t chunks = std::max<int64_t>(1, (N + kChunk - 1) / kChunk);
  const auto fns = score_fns<T>();
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, k = task % chunks;
      const int64_t lo = k * kChunk, hi = std::min(N, lo + kChunk);
      fns.scale_copy(zp + n * N + lo, gp[n], gzp + n * N + lo, hi - lo);
    }
  });
  for (int64_t n = 0; n < B; ++n) glp[n] = -gp[n];
}

at::Tensor flow_nll_fwd_cpu(const at::Tensor& z_, const at::Tensor& logdet_) {
  check_flow_nll_args(kFwd, z_, logdet_);
  check_cpu_dtype(kFwd, z_);
  const at::Tensor z = z_.contiguous(), logdet = logdet_.contiguous();
  const int64_t B = z.size(0);
  const int64_t N = B > 0 ? z.numel() / B : 0;
  at::Tensor out = at::empty({B}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "flow_nll_fwd_cpu", [&] {
    nll_forward_kernel<scalar_t>(z.data_ptr<scalar_t>(), logdet.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, N);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> flow_nll_bwd_cpu(const at::Tensor& grad_, const at::Tensor& z_) {
  check_floating(z_, kBwd, "z");
  check_floating(grad_, kBwd, "grad");
  check_like(grad_, z_, kBwd, "grad", "z");
  TORCH_CHECK_VALUE(z_.dim() >= 1, kBwd, ": z must have a batch dimension");
  TORCH_CHECK_VALUE(grad_.dim() == 1 && grad_.size(0) == z_.size(0), kBwd, ": grad must have shape [", z_.size(0),
                    "], got ", grad_.sizes());
  check_cpu_dtype(kBwd, z_);
  const at::Tensor z = z_.contiguous(), grad = grad_.contiguous();
  const int64_t B = z.size(0);
  const int64_t N = B > 0 ? z.numel() / B : 0;
  at::Tensor gz = at::empty(z.sizes(), z.options());
  at::Tensor gl = at::empty({B}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "flow_nll_bwd_cpu", [&] {
    nll_backward_kernel<scalar_t>(grad.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), gz.data_ptr<scalar_t>(),
                                  gl.data_ptr<scalar_t>(), B, N);
  });
  return {gz, gl};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(dadf_fast, CPU, m) {
  m.impl("flow_nll_fwd", &cpu::flow_nll_fwd_cpu);
  m.impl("flow_nll_bwd", &cpu::flow_nll_bwd_cpu);
}

}  // namespace dadf_fast
