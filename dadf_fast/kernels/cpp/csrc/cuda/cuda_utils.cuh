// Small helpers shared by the dadf_fast CUDA kernels.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace dadf_fast {
namespace cuda {

constexpr int kThreads = 256;

// Accumulator of reductions: double for float/double inputs (deterministic and as accurate
// as the CPU kernels), float for half/bfloat16.
template <typename T>
struct AccType {
  using type = double;
};
template <>
struct AccType<c10::Half> {
  using type = float;
};
template <>
struct AccType<c10::BFloat16> {
  using type = float;
};
template <typename T>
using acc_t = typename AccType<T>::type;

template <typename T>
__device__ __forceinline__ T dev_exp(T x) {
  return ::exp(x);
}
template <>
__device__ __forceinline__ float dev_exp<float>(float x) {
  return ::expf(x);
}
template <typename T>
__device__ __forceinline__ T dev_tanh(T x) {
  return ::tanh(x);
}
template <>
__device__ __forceinline__ float dev_tanh<float>(float x) {
  return ::tanhf(x);
}
template <typename T>
__device__ __forceinline__ T dev_log(T x) {
  return ::log(x);
}
template <>
__device__ __forceinline__ float dev_log<float>(float x) {
  return ::logf(x);
}

template <typename T>
__device__ __forceinline__ T quiet_nan() {
  return static_cast<T>(NAN);
}

// Fixed-shape tree reduction over the block (blockDim.x == kThreads): the same operands
// are always combined in the same order, so results are deterministic.  All threads must
// call it; the result is valid in every thread.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* smem) {
  const int tid = threadIdx.x;
  smem[tid] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) smem[tid] = smem[tid] + smem[tid + s];
    __syncthreads();
  }
  const T r = smem[0];
  __syncthreads();
  return r;
}

// NaN-propagating max.
template <typename T>
__device__ __forceinline__ T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

template <typename T>
__device__ __forceinline__ T block_max(T v, T* smem) {
  const int tid = threadIdx.x;
  smem[tid] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) smem[tid] = nan_max(smem[tid], smem[tid + s]);
    __syncthreads();
  }
  const T r = smem[0];
  __syncthreads();
  return r;
}

}  // namespace cuda
}  // namespace dadf_fast
