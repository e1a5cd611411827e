// CUDA kernels of one affine coupling step (coupling + global affine + hard permutation).
//
// Grid: x = (sample n, output channel i) rows, y = chunks of kChunk pixels of the row.
// Each block handles one chunk of one row (the permutation is a per-block gather, so the
// coupled/passive branch is uniform in a block).  Sums (log-det, grad_g, grad_b) are reduced
// per block with a fixed tree, written to a partials buffer and combined by a second kernel
// in a fixed order: no atomics, results are deterministic.
//
// The permutation is not validated on the host (that would cost a device sync per call);
// an out-of-range entry never causes an out-of-bounds access: the affected rows are
// written as NaN (forward; in reverse the output starts NaN-filled, so a channel that no
// valid entry maps to stays NaN) and the log-det / gradients become NaN.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>

#include "cuda/cuda_utils.cuh"
#include "dadf_common.h"

namespace dadf_fast {
namespace cuda {
namespace {

constexpr const char* kFwd = "dadf_fast::affine_coupling_fwd";
constexpr const char* kBwd = "dadf_fast::affine_coupling_bwd";
constexpr int64_t kChunk = 2048;

int64_t num_chunks(const char* op, int64_t P) {
  const int64_t n = P > 0 ? (P + kChunk - 1) / kChunk : 1;
  TORCH_CHECK(n <= 65535, op, ": H*W = ", P, " is too large for the CUDA kernel");
  return n;
}

template <typename T, bool kInverse>
__global__ void coupling_fwd_kernel(const T* __restrict__ x, const T* __restrict__ a, const T* __restrict__ g,
                                    const T* __restrict__ b, const int64_t* __restrict__ perm, T* __restrict__ y,
                                    acc_t<T>* __restrict__ partial, int64_t C, int64_t P,
                                    at::opmath_type<T> clamp, at::opmath_type<T> a_scale) {
  using O = at::opmath_type<T>;
  using A = acc_t<T>;
  __shared__ A smem[kThreads];
  const int64_t row = blockIdx.x;
  const int64_t n = row / C, i = row % C;
  const int64_t c2 = C / 2, c1 = C - c2;
  const int64_t c = perm[i];
  const bool valid = c >= 0 && c < C;
  const int64_t lo = static_cast<int64_t>(blockIdx.y) * kChunk;
  const int64_t hi = P < lo + kChunk ? P : lo + kChunk;
  A acc = 0;
  if (valid) {
    const O gc = static_cast<O>(g[c]), bc = static_cast<O>(b[c]);
    const T* src = kInverse ? x + row * P : x + (n * C + c) * P;
    T* dst = kInverse ? y + (n * C + c) * P : y + row * P;
    if (c < c1) {
      for (int64_t p = lo + threadIdx.x; p < hi; p += blockDim.x) {
        const O v = static_cast<O>(src[p]);
        dst[p] = static_cast<T>(kInverse ? (v - bc) / gc : v * gc + bc);
      }
    } else {
      const T* as = a + (n * 2 * c2 + (c - c1)) * P;
      const T* at = as + c2 * P;
      for (int64_t p = lo + threadIdx.x; p < hi; p += blockDim.x) {
        const O s = clamp * dev_tanh<O>(a_scale * static_cast<O>(as[p]));
        const O t = a_scale * static_cast<O>(at[p]);
        const O v = static_cast<O>(src[p]);
        if (kInverse) {
          dst[p] = static_cast<T>(((v - bc) / gc - t) * dev_exp<O>(-s));
        } else {
          dst[p] = static_cast<T>((v * dev_exp<O>(s) + t) * gc + bc);
        }
        acc += static_cast<A>(s);
      }
    }
  } else if (!kInverse) {
    for (int64_t p = lo + threadIdx.x; p < hi; p += blockDim.x) y[row * P + p] = quiet_nan<T>();
  }
  const A total = block_sum<A>(acc, smem);
  if (threadIdx.x == 0) partial[row * gridDim.y + blockIdx.y] = valid ? total : quiet_nan<A>();
}

// logdet[n] = +-(sum of the partials of sample n + P * sum_c log g[c]); one block per sample.
template <typename T>
__global__ void logdet_reduce_kernel(const acc_t<T>* __restrict__ partial, const T* __restrict__ g,
                                     T* __restrict__ logdet, int64_t C, int64_t chunks, int64_t P, bool negate) {
  using A = acc_t<T>;
  __shared__ A smem[kThreads];
  const int64_t n = blockIdx.x;
  const int64_t count = C * chunks;
  const acc_t<T>* part = partial + n * count;
  A acc = 0;
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x) acc += part[k];
  const A s = block_sum<A>(acc, smem);
  A lg = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) lg += dev_log<A>(static_cast<A>(g[c]));
  const A log_g = block_sum<A>(lg, smem);
  if (threadIdx.x == 0) {
    const A v = s + static_cast<A>(P) * log_g;
    logdet[n] = static_cast<T>(negate ? -v : v);
  }
}

template <typename T>
__global__ void coupling_bwd_kernel(const T* __restrict__ go, const T* __restrict__ gl, const T* __restrict__ x,
                                    const T* __restrict__ a, const T* __restrict__ g, const T* __restrict__ b,
                                    const int64_t* __restrict__ perm, T* __restrict__ gx, T* __restrict__ ga,
                                    acc_t<T>* __restrict__ part_g, acc_t<T>* __restrict__ part_b, int64_t C,
                                    int64_t P, at::opmath_type<T> clamp, at::opmath_type<T> a_scale, bool reverse) {
  using O = at::opmath_type<T>;
  using A = acc_t<T>;
  __shared__ A smem[kThreads];
  const int64_t row = blockIdx.x;
  const int64_t n = row / C, i = row % C;
  const int64_t c2 = C / 2, c1 = C - c2;
  const int64_t c = perm[i];
  if (!(c >= 0 && c < C)) return;  // partials stay NaN (pre-filled); uniform per block
  const int64_t lo = static_cast<int64_t>(blockIdx.y) * kChunk;
  const int64_t hi = P < lo + kChunk ? P : lo + kChunk;
  const O gc = static_cast<O>(g[c]), bc = static_cast<O>(b[c]);
  const O gln = gl ? static_cast<O>(gl[n]) : O(0);
  const O dsda = clamp * a_scale;
  A acc_g = 0, acc_b = 0;
  const int64_t j = c >= c1 ? c - c1 : 0;  // a / grad_a rows are only touched when c >= c1
  const T* as = a + (n * 2 * c2 + j) * P;
  const T* at = as + c2 * P;
  T* gas = ga + (n * 2 * c2 + j) * P;
  T* gat = gas + c2 * P;
  if (!reverse) {
    const T* gy = go + row * P;
    const T* xr = x + (n * C + c) * P;
    T* gxr = gx + (n * C + c) * P;
    for (int64_t p = lo + threadIdx.x; p < hi; p += blockDim.x) {
      const O gyp = static_cast<O>(gy[p]);
      const O xp = static_cast<O>(xr[p]);
      const O gu = gyp * gc;
      if (c < c1) {
        gxr[p] = static_cast<T>(gu);
        acc_g += static_cast<A>(gyp * xp);
      } else {
        const O th = dev_tanh<O>(a_scale * static_cast<O>(as[p]));
        const O e = dev_exp<O>(clamp * th);
        const O xe = xp * e;
        const O u = xe + a_scale * static_cast<O>(at[p]);
        gxr[p] = static_cast<T>(gu * e);
        gas[p] = static_cast<T>((gu * xe + gln) * dsda * (O(1) - th * th));
        gat[p] = static_cast<T>(gu * a_scale);
        acc_g += static_cast<A>(gyp * u);
      }
      acc_b += static_cast<A>(gyp);
    }
  } else {
    const T* yr = x + row * P;
    const T* gor = go + (n * C + c) * P;
    T* gyr = gx + row * P;
    for (int64_t p = lo + threadIdx.x; p < hi; p += blockDim.x) {
      const O u = (static_cast<O>(yr[p]) - bc) / gc;
      const O gop = static_cast<O>(gor[p]);
      O gv;
      if (c < c1) {
        gv = gop / gc;
      } else {
        const O th = dev_tanh<O>(a_scale * static_cast<O>(as[p]));
        const O einv = dev_exp<O>(-clamp * th);
        const O out = (u - a_scale * static_cast<O>(at[p])) * einv;
        const O gu = gop * einv;
        gv = gu / gc;
        gas[p] = static_cast<T>(-(gop * out + gln) * dsda * (O(1) - th * th));
        gat[p] = static_cast<T>(-gu * a_scale);
      }
      gyr[p] = static_cast<T>(gv);
      acc_g += static_cast<A>(gv * u);
      acc_b += static_cast<A>(gv);
    }
  }
  const A sg = block_sum<A>(acc_g, smem);
  const A sb = block_sum<A>(acc_b, smem);
  if (threadIdx.x == 0) {
    const int64_t idx = (n * C + c) * gridDim.y + blockIdx.y;
    part_g[idx] = reverse ? -sg : sg;
    part_b[idx] = reverse ? -sb : sb;
  }
}

// grad_g[c] = sum_{n,k} part_g + sign * sum(gl) * P / g[c]; grad_b[c] = sum_{n,k} part_b.
// One block per channel, fixed order.
template <typename T>
__global__ void grad_gb_reduce_kernel(const acc_t<T>* __restrict__ part_g, const acc_t<T>* __restrict__ part_b,
                                      const T* __restrict__ gl, const T* __restrict__ g, T* __restrict__ gg,
                                      T* __restrict__ gb, int64_t B, int64_t C, int64_t chunks, int64_t P,
                                      bool reverse) {
  using A = acc_t<T>;
  __shared__ A smem[kThreads];
  const int64_t c = blockIdx.x;
  A t = 0;
  if (gl) {
    for (int64_t n = threadIdx.x; n < B; n += blockDim.x) t += static_cast<A>(gl[n]);
  }
  const A gl_total = block_sum<A>(t, smem);
  A sg = 0, sb = 0;
  for (int64_t idx = threadIdx.x; idx < B * chunks; idx += blockDim.x) {
    const int64_t n = idx / chunks, k = idx % chunks;
    sg += part_g[(n * C + c) * chunks + k];
    sb += part_b[(n * C + c) * chunks + k];
  }
  sg = block_sum<A>(sg, smem);
  sb = block_sum<A>(sb, smem);
  if (threadIdx.x == 0) {
    const A sign = reverse ? A(-1) : A(1);
    gg[c] = static_cast<T>(sg + sign * gl_total * static_cast<A>(P) / static_cast<A>(g[c]));
    gb[c] = static_cast<T>(sb);
  }
}

template <typename T>
at::ScalarType acc_scalar_type() {
  return std::is_same<acc_t<T>, double>::value ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_fwd_cuda(const at::Tensor& x_, const at::Tensor& a_,
                                                            const at::Tensor& g_, const at::Tensor& b_,
                                                            const at::Tensor& perm_, double clamp, double a_scale,
                                                            bool reverse, bool compute_logdet) {
  check_coupling_args(kFwd, x_, a_, g_, b_, perm_, clamp);
  TORCH_CHECK(x_.is_cuda(), kFwd, ": CUDA kernel called with tensors on ", x_.device());
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), a = a_.contiguous(), g = g_.contiguous(), b = b_.contiguous();
  const at::Tensor perm = perm_.contiguous();
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  // reverse scatters into channel perm[i]: NaN-filled so that a bad perm cannot leave
  // uninitialised memory in the output (reverse is for sampling and tests: the fill is cheap)
  at::Tensor y = reverse ? at::full(x.sizes(), NAN, x.options()) : at::empty(x.sizes(), x.options());
  at::Tensor logdet = at::empty({compute_logdet ? B : 0}, x.options());
  if (B == 0) return {y, logdet};
  if (P == 0) {
    if (compute_logdet) logdet.zero_();
    return {y, logdet};
  }
  const int64_t chunks = num_chunks(kFwd, P);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_fwd_cuda", [&] {
    using T = scalar_t;
    using O = at::opmath_type<T>;
    at::Tensor partial = at::empty({B * C * chunks}, x.options().dtype(acc_scalar_type<T>()));
    const dim3 grid(static_cast<unsigned>(B * C), static_cast<unsigned>(chunks));
    if (reverse) {
      coupling_fwd_kernel<T, true><<<grid, kThreads, 0, stream>>>(
          x.data_ptr<T>(), a.data_ptr<T>(), g.data_ptr<T>(), b.data_ptr<T>(), perm.data_ptr<int64_t>(),
          y.data_ptr<T>(), partial.data_ptr<acc_t<T>>(), C, P, static_cast<O>(clamp), static_cast<O>(a_scale));
    } else {
      coupling_fwd_kernel<T, false><<<grid, kThreads, 0, stream>>>(
          x.data_ptr<T>(), a.data_ptr<T>(), g.data_ptr<T>(), b.data_ptr<T>(), perm.data_ptr<int64_t>(),
          y.data_ptr<T>(), partial.data_ptr<acc_t<T>>(), C, P, static_cast<O>(clamp), static_cast<O>(a_scale));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (compute_logdet) {
      logdet_reduce_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
          partial.data_ptr<acc_t<T>>(), g.data_ptr<T>(), logdet.data_ptr<T>(), C, chunks, P, reverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> affine_coupling_bwd_cuda(
    const at::Tensor& grad_out_, const std::optional<at::Tensor>& grad_logdet_, const at::Tensor& x_,
    const at::Tensor& a_, const at::Tensor& g_, const at::Tensor& b_, const at::Tensor& perm_, double clamp,
    double a_scale, bool reverse) {
  check_coupling_args(kBwd, x_, a_, g_, b_, perm_, clamp);
  TORCH_CHECK(x_.is_cuda(), kBwd, ": CUDA kernel called with tensors on ", x_.device());
  check_like(grad_out_, x_, kBwd, "grad_out", "x");
  TORCH_CHECK_VALUE(grad_out_.sizes() == x_.sizes(), kBwd, ": grad_out must have the shape of x ", x_.sizes(),
                    ", got ", grad_out_.sizes());
  c10::cuda::CUDAGuard guard(x_.device());
  const int64_t B = x_.size(0), C = x_.size(1), P = x_.size(2) * x_.size(3);
  at::Tensor gl;
  if (grad_logdet_.has_value() && grad_logdet_->defined()) {
    gl = grad_logdet_->contiguous();
    check_like(gl, x_, kBwd, "grad_logdet", "x");
    TORCH_CHECK_VALUE(gl.dim() == 1 && gl.size(0) == B, kBwd, ": grad_logdet must have shape [", B, "], got ",
                      gl.sizes());
  }
  const at::Tensor go = grad_out_.contiguous(), x = x_.contiguous(), a = a_.contiguous();
  const at::Tensor g = g_.contiguous(), b = b_.contiguous(), perm = perm_.contiguous();
  at::Tensor gx = at::empty(x.sizes(), x.options());
  at::Tensor ga = at::empty(a.sizes(), a.options());
  at::Tensor gg = at::empty({C}, x.options());
  at::Tensor gb = at::empty({C}, x.options());
  const int64_t chunks = num_chunks(kBwd, P);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_coupling_bwd_cuda", [&] {
    using T = scalar_t;
    using O = at::opmath_type<T>;
    const T* glp = gl.defined() ? gl.data_ptr<T>() : nullptr;
    const auto acc_opts = x.options().dtype(acc_scalar_type<T>());
    // NaN-filled, so that a row skipped for an invalid permutation entry poisons its channel.
    at::Tensor part_g = at::full({B * C * chunks}, NAN, acc_opts);
    at::Tensor part_b = at::full({B * C * chunks}, NAN, acc_opts);
    if (B > 0 && P > 0) {
      const dim3 grid(static_cast<unsigned>(B * C), static_cast<unsigned>(chunks));
      coupling_bwd_kernel<T><<<grid, kThreads, 0, stream>>>(
          go.data_ptr<T>(), glp, x.data_ptr<T>(), a.data_ptr<T>(), g.data_ptr<T>(), b.data_ptr<T>(),
          perm.data_ptr<int64_t>(), gx.data_ptr<T>(), ga.data_ptr<T>(), part_g.data_ptr<acc_t<T>>(),
          part_b.data_ptr<acc_t<T>>(), C, P, static_cast<O>(clamp), static_cast<O>(a_scale), reverse);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      part_g.zero_();
      part_b.zero_();
    }
    grad_gb_reduce_kernel<T><<<static_cast<unsigned>(C), kThreads, 0, stream>>>(
        part_g.data_ptr<acc_t<T>>(), part_b.data_ptr<acc_t<T>>(), glp, g.data_ptr<T>(), gg.data_ptr<T>(),
        gb.data_ptr<T>(), B, C, (B > 0 && P > 0) ? chunks : 0, P, reverse);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, ga, gg, gb};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(dadf_fast, CUDA, m) {
  m.impl("affine_coupling_fwd", &cuda::affine_coupling_fwd_cuda);
  m.impl("affine_coupling_bwd", &cuda::affine_coupling_bwd_cuda);
}

}  // namespace dadf_fast
