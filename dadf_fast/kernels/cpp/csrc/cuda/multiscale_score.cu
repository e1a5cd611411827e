// CUDA kernels of multi-scale anomaly scoring (see csrc/cpu/multiscale_score.cpp).
//
// 1. per scale, one thread per low-resolution pixel: p = exp(-0.5 * mean_c z^2);
// 2. one thread per output pixel: bilinear taps of every scale (ATen's align_corners=False
//    weights, dadf_common.h), mean over scales, map = 1 - mean, written once; per-block max
//    and sum with a fixed tree into a partials buffer;
// 3. one block per image combines its partials in a fixed order into the score.
// No full-resolution temporaries per scale, no atomics (deterministic).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cuda/cuda_utils.cuh"
#include "dadf_common.h"

namespace dadf_fast {
namespace cuda {
namespace {

constexpr const char* kOp = "dadf_fast::multiscale_score";
constexpr int kMaxScales = 16;

template <typename O>
struct Scales {
  const O* p[kMaxScales];
  int64_t h[kMaxScales];
  int64_t w[kMaxScales];
  int count;
};

template <typename T>
__global__ void channel_mean_exp_kernel(const T* __restrict__ z, at::opmath_type<T>* __restrict__ p, int64_t B,
                                        int64_t C, int64_t HW) {
  using O = at::opmath_type<T>;
  using A = acc_t<T>;
  const int64_t total = B * HW;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t n = idx / HW, pix = idx % HW;
    const T* zp = z + n * C * HW + pix;
    A acc = 0;
    for (int64_t c = 0; c < C; ++c) {
      const A v = static_cast<A>(zp[c * HW]);
      acc += v * v;
    }
    const O mean = static_cast<O>(acc / static_cast<A>(C));
    p[idx] = dev_exp<O>(static_cast<O>(-0.5) * mean);
  }
}

template <typename T>
__global__ void score_map_kernel(Scales<at::opmath_type<T>> scales, T* __restrict__ map,
                                 at::opmath_type<T>* __restrict__ part_max, acc_t<T>* __restrict__ part_sum,
                                 int64_t H, int64_t W) {
  using O = at::opmath_type<T>;
  using A = acc_t<T>;
  __shared__ O smem_max[kThreads];
  __shared__ A smem_sum[kThreads];
  const int64_t n = blockIdx.y;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  O m = -std::numeric_limits<O>::infinity();
  A sum = 0;
  if (idx < H * W) {
    const int64_t oy = idx / W, ox = idx % W;
    O total = 0;
    for (int s = 0; s < scales.count; ++s) {
      const int64_t h = scales.h[s], w = scales.w[s];
      const LinearTap<O> ty = linear_tap<O>(oy, h, H);
      const LinearTap<O> tx = linear_tap<O>(ox, w, W);
      const O* p0 = scales.p[s] + (n * h + ty.i0) * w;
      const O* p1 = scales.p[s] + (n * h + ty.i1) * w;
      const O v = (tx.l0 * p0[tx.i0] + tx.l1 * p0[tx.i1]) * ty.l0 + (tx.l0 * p1[tx.i0] + tx.l1 * p1[tx.i1]) * ty.l1;
      total = s == 0 ? v : total + v;
    }
    const O value = O(1) - total / static_cast<O>(scales.count);
    map[n * H * W + idx] = static_cast<T>(value);
    m = value;
    sum = static_cast<A>(value);
  }
  const O bm = block_max<O>(m, smem_max);
  const A bs = block_sum<A>(sum, smem_sum);
  if (threadIdx.x == 0) {
    part_max[n * gridDim.x + blockIdx.x] = bm;
    part_sum[n * gridDim.x + blockIdx.x] = bs;
  }
}

template <typename T>
__global__ void score_reduce_kernel(const at::opmath_type<T>* __restrict__ part_max,
                                    const acc_t<T>* __restrict__ part_sum, T* __restrict__ score, int64_t blocks,
                                    int64_t HW, bool reduce_max) {
  using O = at::opmath_type<T>;
  using A = acc_t<T>;
  __shared__ O smem_max[kThreads];
  __shared__ A smem_sum[kThreads];
  const int64_t n = blockIdx.x;
  O m = -std::numeric_limits<O>::infinity();
  A s = 0;
  for (int64_t k = threadIdx.x; k < blocks; k += blockDim.x) {
    m = nan_max<O>(m, part_max[n * blocks + k]);
    s += part_sum[n * blocks + k];
  }
  m = block_max<O>(m, smem_max);
  s = block_sum<A>(s, smem_sum);
  if (threadIdx.x == 0) score[n] = reduce_max ? static_cast<T>(m) : static_cast<T>(s / static_cast<A>(HW));
}

template <typename T>
at::ScalarType acc_scalar_type() {
  return std::is_same<acc_t<T>, double>::value ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> multiscale_score_cuda(at::TensorList zs_, int64_t H, int64_t W,
                                                         c10::string_view reduce) {
  const bool reduce_max = check_score_args(kOp, zs_, H, W, std::string(reduce));
  const at::Tensor& z0 = zs_[0];
  TORCH_CHECK(z0.is_cuda(), kOp, ": CUDA kernel called with tensors on ", z0.device());
  TORCH_CHECK_VALUE(static_cast<int64_t>(zs_.size()) <= kMaxScales, kOp, ": the CUDA kernel takes at most ",
                    kMaxScales, " scales, got ", zs_.size());
  c10::cuda::CUDAGuard guard(z0.device());
  const int64_t B = z0.size(0);
  TORCH_CHECK(B <= 65535, kOp, ": batch ", B, " is too large for the CUDA kernel");
  std::vector<at::Tensor> zs;
  for (const at::Tensor& z : zs_) zs.push_back(z.contiguous());
  at::Tensor map = at::empty({B, 1, H, W}, z0.options());
  at::Tensor score = at::empty({B}, z0.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z0.scalar_type(), "multiscale_score_cuda", [&] {
    using T = scalar_t;
    using O = at::opmath_type<T>;
    const auto opmath_opts = z0.options().dtype(std::is_same<O, double>::value ? at::kDouble : at::kFloat);
    std::vector<at::Tensor> ps;
    Scales<O> scales{};
    scales.count = static_cast<int>(zs.size());
    for (size_t s = 0; s < zs.size(); ++s) {
      const at::Tensor& z = zs[s];
      const int64_t C = z.size(1), h = z.size(2), w = z.size(3);
      at::Tensor p = at::empty({B, h * w}, opmath_opts);
      const int64_t total = B * h * w;
      const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8);
      channel_mean_exp_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          z.data_ptr<T>(), p.data_ptr<O>(), B, C, h * w);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      scales.p[s] = p.data_ptr<O>();
      scales.h[s] = h;
      scales.w[s] = w;
      ps.push_back(p);  // keeps the buffer alive until the kernels below are queued
    }
    const int64_t blocks = (H * W + kThreads - 1) / kThreads;
    at::Tensor part_max = at::empty({B * blocks}, opmath_opts);
    at::Tensor part_sum = at::empty({B * blocks}, z0.options().dtype(acc_scalar_type<T>()));
    score_map_kernel<T><<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(B)), kThreads, 0, stream>>>(
        scales, map.data_ptr<T>(), part_max.data_ptr<O>(), part_sum.data_ptr<acc_t<T>>(), H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    score_reduce_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        part_max.data_ptr<O>(), part_sum.data_ptr<acc_t<T>>(), score.data_ptr<T>(), blocks, H * W, reduce_max);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {map, score};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(dadf_fast, CUDA, m) { m.impl("multiscale_score", &cuda::multiscale_score_cuda); }

}  // namespace dadf_fast
