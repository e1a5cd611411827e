// CUDA kernels of the per-sample flow negative log-likelihood 0.5*sum(z^2) - logdet.
//
// Forward: one pass over z, grid = (chunks of kChunk elements, samples); each block reduces
// its chunk with a fixed tree into a partials buffer, and a second kernel adds the chunks of
// each sample in a fixed order (deterministic, no atomics).  Backward: elementwise.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "cuda/cuda_utils.cuh"
#include "dadf_common.h"

namespace dadf_fast {
namespace cuda {
namespace {

constexpr const char* kFwd = "dadf_fast::flow_nll_fwd";
constexpr const char* kBwd = "dadf_fast::flow_nll_bwd";
constexpr int64_t kChunk = 8192;

template <typename T>
__global__ void sumsq_kernel(const T* __restrict__ z, acc_t<T>* __restrict__ partial, int64_t N) {
  using A = acc_t<T>;
  __shared__ A smem[kThreads];
  const int64_t n = blockIdx.y, k = blockIdx.x;
  const int64_t lo = k * kChunk, hi = N < lo + kChunk ? N : lo + kChunk;
  const T* zr = z + n * N;
  A acc = 0;
  for (int64_t p = lo + threadIdx.x; p < hi; p += blockDim.x) {
    const A v = static_cast<A>(zr[p]);
    acc += v * v;
  }
  const A total = block_sum<A>(acc, smem);
  if (threadIdx.x == 0) partial[n * gridDim.x + k] = total;
}

template <typename T>
__global__ void nll_reduce_kernel(const acc_t<T>* __restrict__ partial, const T* __restrict__ logdet,
                                  T* __restrict__ out, int64_t chunks) {
  using A = acc_t<T>;
  __shared__ A smem[kThreads];
  const int64_t n = blockIdx.x;
  A acc = 0;
  for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) acc += partial[n * chunks + k];
  const A s = block_sum<A>(acc, smem);
  if (threadIdx.x == 0) out[n] = static_cast<T>(A(0.5) * s - static_cast<A>(logdet[n]));
}

template <typename T>
__global__ void nll_bwd_kernel(const T* __restrict__ grad, const T* __restrict__ z, T* __restrict__ gz,
                               T* __restrict__ gl, int64_t B, int64_t N) {
  using O = at::opmath_type<T>;
  const int64_t total = B * N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    gz[idx] = static_cast<T>(static_cast<O>(grad[idx / N]) * static_cast<O>(z[idx]));
  }
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < B; n += stride) {
    gl[n] = static_cast<T>(-static_cast<O>(grad[n]));
  }
}

template <typename T>
at::ScalarType acc_scalar_type() {
  return std::is_same<acc_t<T>, double>::value ? at::kDouble : at::kFloat;
}

at::Tensor flow_nll_fwd_cuda(const at::Tensor& z_, const at::Tensor& logdet_) {
  check_flow_nll_args(kFwd, z_, logdet_);
  TORCH_CHECK(z_.is_cuda(), kFwd, ": CUDA kernel called with tensors on ", z_.device());
  c10::cuda::CUDAGuard guard(z_.device());
  const at::Tensor z = z_.contiguous(), logdet = logdet_.contiguous();
  const int64_t B = z.size(0);
  const int64_t N = B > 0 ? z.numel() / B : 0;
  at::Tensor out = at::empty({B}, z.options());
  if (B == 0) return out;
  const int64_t chunks = N > 0 ? (N + kChunk - 1) / kChunk : 1;
  TORCH_CHECK(B <= 65535, kFwd, ": batch ", B, " is too large for the CUDA kernel");
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "flow_nll_fwd_cuda", [&] {
    using T = scalar_t;
    at::Tensor partial = at::empty({B * chunks}, z.options().dtype(acc_scalar_type<T>()));
    sumsq_kernel<T><<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(B)), kThreads, 0, stream>>>(
        z.data_ptr<T>(), partial.data_ptr<acc_t<T>>(), N);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    nll_reduce_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        partial.data_ptr<acc_t<T>>(), logdet.data_ptr<T>(), out.data_ptr<T>(), chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> flow_nll_bwd_cuda(const at::Tensor& grad_, const at::Tensor& z_) {
  check_floating(z_, kBwd, "z");
  check_floating(grad_, kBwd, "grad");
  check_like(grad_, z_, kBwd, "grad", "z");
  TORCH_CHECK_VALUE(z_.dim() >= 1, kBwd, ": z must have a batch dimension");
  TORCH_CHECK_VALUE(grad_.dim() == 1 && grad_.size(0) == z_.size(0), kBwd, ": grad must have shape [", z_.size(0),
                    "], got ", grad_.sizes());
  TORCH_CHECK(z_.is_cuda(), kBwd, ": CUDA kernel called with tensors on ", z_.device());
  c10::cuda::CUDAGuard guard(z_.device());
  const at::Tensor z = z_.contiguous(), grad = grad_.contiguous();
  const int64_t B = z.size(0);
  const int64_t N = B > 0 ? z.numel() / B : 0;
  at::Tensor gz = at::empty(z.sizes(), z.options());
  at::Tensor gl = at::empty({B}, z.options());
  if (B == 0) return {gz, gl};
  const int64_t total = std::max<int64_t>(B * N, B);
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "flow_nll_bwd_cuda", [&] {
    using T = scalar_t;
    nll_bwd_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        grad.data_ptr<T>(), z.data_ptr<T>(), gz.data_ptr<T>(), gl.data_ptr<T>(), B, N);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gz, gl};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(dadf_fast, CUDA, m) {
  m.impl("flow_nll_fwd", &cuda::flow_nll_fwd_cuda);
  m.impl("flow_nll_bwd", &cuda::flow_nll_bwd_cuda);
}

}  // namespace dadf_fast
