// Shared helpers for the dadf_fast C++/CUDA kernels: argument checks used by every
// backend and the small pieces of math that CPU and CUDA kernels must compute identically.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <string>

#if defined(__CUDACC__)
#define DADF_HD __host__ __device__ __forceinline__
#else
#define DADF_HD inline
#endif

namespace dadf_fast {

// ---------------------------------------------------------------------------------------
// Argument checks (shared by the CPU and CUDA entry points; every failure is a TORCH_CHECK,
// which surfaces in Python as a RuntimeError / ValueError / TypeError, never a crash).
// ---------------------------------------------------------------------------------------

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                       const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
                   " but ", ref_name, " has ", ref.scalar_type());
}

// Validates the affine-coupling arguments; returns nothing, throws on any inconsistency.
// allow_fibres: the kernel also takes 2-D fibres x [N, C] with a [N, 2*(C//2)] (CPU only;
// the CUDA kernel takes 4-D inputs).
inline void check_coupling_args(const char* op, const at::Tensor& x, const at::Tensor& a, const at::Tensor& g,
                                const at::Tensor& b, const at::Tensor& perm, double clamp,
                                bool allow_fibres = false) {
  check_floating(x, op, "x");
  if (allow_fibres) {
    TORCH_CHECK_VALUE(x.dim() == 4 || x.dim() == 2, op, ": x must be 4-D [B, C, H, W] or 2-D [N, C], got ", x.dim(),
                      "-D shape ", x.sizes());
  } else {
    TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D [B, C, H, W], got ", x.dim(), "-D shape ", x.sizes());
  }
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(C >= 2, op, ": x needs at least 2 channels to split, got C=", C);
  check_floating(a, op, "a");
  check_floating(g, op, "g");
  check_floating(b, op, "b");
  check_like(a, x, op, "a", "x");
  check_like(g, x, op, "g", "x");
  check_like(b, x, op, "b", "x");
  if (x.dim() == 2) {
    TORCH_CHECK_VALUE(a.dim() == 2 && a.size(0) == x.size(0) && a.size(1) == 2 * (C / 2), op, ": a must have shape [",
                      x.size(0), ", ", 2 * (C / 2), "] (2*(C//2) channels), got ", a.sizes());
  } else {
    TORCH_CHECK_VALUE(a.dim() == 4 && a.size(0) == x.size(0) && a.size(1) == 2 * (C / 2) &&
                          a.size(2) == x.size(2) && a.size(3) == x.size(3),
                      op, ": a must have shape [", x.size(0), ", ", 2 * (C / 2), ", ", x.size(2), ", ", x.size(3),
                      "] (2*(C//2) channels), got ", a.sizes());
  }
  TORCH_CHECK_VALUE(g.dim() == 1 && g.size(0) == C, op, ": g must have shape [", C, "], got ", g.sizes());
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == C, op, ": b must have shape [", C, "], got ", b.sizes());
  TORCH_CHECK_TYPE(perm.scalar_type() == at::kLong, op, ": perm must be an int64 tensor, got ", perm.scalar_type());
  TORCH_CHECK(perm.device() == x.device(), op, ": perm is on ", perm.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(perm.dim() == 1 && perm.size(0) == C, op, ": perm must have shape [", C, "], got ",
                    perm.sizes());
  TORCH_CHECK_VALUE(clamp > 0, op, ": clamp must be > 0, got ", clamp);
}

// Checks (on the host) that perm is a permutation of 0..C-1.  Only called for CPU tensors:
// on CUDA it would cost a device->host sync, so the CUDA kernels bounds-check instead.
inline void check_permutation_cpu(const char* op, const int64_t* perm, int64_t C) {
  std::string seen(static_cast<size_t>(C), '\0');
  for (int64_t i = 0; i < C; ++i) {
    const int64_t p = perm[i];
    TORCH_CHECK_VALUE(p >= 0 && p < C, op, ": perm[", i, "] = ", p, " is out of range [0, ", C, ")");
    TORCH_CHECK_VALUE(!seen[p], op, ": perm is not a permutation (channel ", p, " appears twice)");
    seen[p] = 1;
  }
}

inline void check_flow_nll_args(const char* op, const at::Tensor& z, const at::Tensor& logdet) {
  check_floating(z, op, "z");
  check_floating(logdet, op, "logdet");
  check_like(logdet, z, op, "logdet", "z");
  TORCH_CHECK_VALUE(z.dim() >= 1, op, ": z must have a batch dimension");
  TORCH_CHECK_VALUE(logdet.dim() == 1 && logdet.size(0) == z.size(0), op, ": logdet must have shape [",
                    z.size(0), "] (one per sample of z), got ", logdet.sizes());
}

// Returns reduce_max.
inline bool check_score_args(const char* op, at::TensorList zs, int64_t H, int64_t W, const std::string& reduce) {
  TORCH_CHECK_VALUE(!zs.empty(), op, ": zs is empty; pass at least one scale");
  const at::Tensor& z0 = zs[0];
  for (size_t s = 0; s < zs.size(); ++s) {
    const at::Tensor& z = zs[s];
    const std::string name = "zs[" + std::to_string(s) + "]";
    check_floating(z, op, name.c_str());
    check_like(z, z0, op, name.c_str(), "zs[0]");
    TORCH_CHECK_VALUE(z.dim() == 4, op, ": ", name, " must be 4-D [B, C, h, w], got shape ", z.sizes());
    TORCH_CHECK_VALUE(z.size(0) == z0.size(0), op, ": ", name, " has batch ", z.size(0), " but zs[0] has ",
                      z0.size(0));
    TORCH_CHECK_VALUE(z.numel() > 0, op, ": ", name, " is empty (shape ", z.sizes(), ")");
  }
  TORCH_CHECK_VALUE(H > 0 && W > 0, op, ": output size must be positive, got (", H, ", ", W, ")");
  TORCH_CHECK_VALUE(reduce == "max" || reduce == "mean", op, ": reduce must be 'max' or 'mean', got '", reduce,
                    "'");
  return reduce == "max";
}

// ---------------------------------------------------------------------------------------
// Bilinear resampling weights, computed exactly as ATen's upsample_bilinear2d
// (align_corners=False, no explicit scale factor): src = (in/out) * (dst + 0.5) - 0.5,
// clamped at 0; i0 = floor(src); i1 = i0 + (i0 < in - 1); l1 = src - i0; l0 = 1 - l1.
// T is the op-math type (float for float/half/bf16, double for double).
// ---------------------------------------------------------------------------------------
template <typename T>
struct LinearTap {
  int64_t i0, i1;
  T l0, l1;
};

template <typename T>
DADF_HD LinearTap<T> linear_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  T src = scale * (static_cast<T>(dst) + static_cast<T>(0.5)) - static_cast<T>(0.5);
  if (src < static_cast<T>(0)) src = static_cast<T>(0);
  int64_t i0 = static_cast<int64_t>(src);
  if (i0 > in_size - 1) i0 = in_size - 1;
  T l1 = src - static_cast<T>(i0);
  if (l1 > static_cast<T>(1)) l1 = static_cast<T>(1);
  LinearTap<T> tap;
  if (in_size == out_size) {  // ATen copies in this case
    tap.i0 = tap.i1 = dst;
    tap.l0 = static_cast<T>(1);
    tap.l1 = static_cast<T>(0);
    return tap;
  }
  tap.i0 = i0;
  tap.i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  tap.l1 = l1;
  tap.l0 = static_cast<T>(1) - l1;
  return tap;
}

}  // namespace dadf_fast
