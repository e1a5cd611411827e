// CPU kernels of one affine coupling step (coupling + global affine + hard permutation).
//
// Two layouts.  Fibres (x [N, C], or a [N, C, 1, 1] input: one pixel per row) run the
// fibre kernels of cpu/coupling_fibres.h: channel loop innermost, work split over fibres
// (its header explains the layout and the reductions).  Images (H*W > 1):
// Layout: every tensor is made contiguous, so a (sample, channel) pair is one contiguous
// row of P = H*W values.  Work is split over (sample, output channel) rows with
// at::parallel_for; each row is an elementwise, vectorisable loop.  The permutation is an
// index gather: output row i of sample n reads input channel c = perm[i] (forward), and
// the inverse scatters into channel c.  Per-row partial sums (log-det, grad_g, grad_b) are
// accumulated in double and combined afterwards in a fixed order, so results do not depend
// on the number of threads.  The row kernels (cpu/coupling_rows.h) are compiled once per
// instruction set (baseline x86-64, AVX2+FMA, AVX-512) and picked at run time (cpu_isa.h);
// exp/tanh are vectorisable polynomials (cpu/vec_math.h) for float, libm for double.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/cpu_isa.h"
#include "cpu/vec_math.h"
#include "dadf_common.h"

namespace dadf_fast {
namespace cpu {

template <typename T>
struct CouplingArgs {
  const T* x;        // op input [B, C, P]
  const T* a;        // raw subnet output [B, 2*(C//2), P]
  const T* g;        // [C]
  const T* b;        // [C]
  const int64_t* perm;
  T* y;              // forward/inverse output [B, C, P]
  double* row_s;     // forward/inverse: per-row sum of s [B*C]
  const T* go;       // backward: gradient of the op output
  const T* gl;       // backward: gradient of the log-det (nullptr: none)
  T* gx;             // backward: gradient of x
  T* ga;             // backward: gradient of a
  double* row_gg;    // backward: per-(n, c) partials of grad_g / grad_b [B*C]
  double* row_gb;
  int64_t B, C, P;
  T clamp, a_scale;
  bool reverse;
  int64_t rows_per_block;  // fibre backward: fibres per grad_g/grad_b partial row
};

// Per-task scratch of the fibre backward (C values each), allocated by the caller.
template <typename T>
struct FibreScratch {
  T* row;         // one fibre in channel order (the permutation's gather / scatter buffer)
  T* part_g;      // per-channel partial sums over <= kFibreFlush fibres, in T
  T* part_b;
  double* acc_g;  // per-channel sums over the block, in double
  double* acc_b;
};

// Block length of the vectorised partial sums (then accumulated in double).
constexpr int64_t kRowBlock = 256;
// Fibres summed in T per channel before the partials go to double (as kRowBlock above).
constexpr int64_t kFibreFlush = 64;

// One copy of the row kernels per instruction set (see cpu_isa.h).
namespace isa_default {
#include "cpu/coupling_rows.h"
#include "cpu/coupling_fibres.h"
}  // namespace isa_default
#if defined(DADF_BEGIN_ISA_AVX2)
DADF_BEGIN_ISA_AVX2
namespace isa_avx2 {
#include "cpu/coupling_rows.h"
#include "cpu/coupling_fibres.h"
}  // namespace isa_avx2
DADF_END_ISA
DADF_BEGIN_ISA_AVX512
namespace isa_avx512 {
#include "cpu/coupling_rows.h"
#include "cpu/coupling_fibres.h"
}  // namespace isa_avx512
DADF_END_ISA
#endif

namespace {

constexpr const char* kFwd = "dadf_fast::affine_coupling_fwd";
constexpr const char* kBwd = "dadf_fast::affine_coupling_bwd";

template <typename T>
using RowFn = void (*)(const CouplingArgs<T>&, int64_t, int64_t);

enum class Kernel { kForward, kInverse, kBackward };

template <typename T>
RowFn<T> pick(Kernel k) {
#if defined(DADF_BEGIN_ISA_AVX2)
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return k == Kernel::kForward ? isa_avx512::forward_rows<T>
             : k == Kernel::kInverse ? isa_avx512::inverse_rows<T>
                                     : isa_avx512::backward_rows<T>;
    case Isa::kAvx2:
      return k == Kernel::kForward ? isa_avx2::forward_rows<T>
             : k == Kernel::kInverse ? isa_avx2::inverse_rows<T>
                                     : isa_avx2::backward_rows<T>;
    default:
      break;
  }
#endif
  return k == Kernel::kForward ? isa_default::forward_rows<T>
         : k == Kernel::kInverse ? isa_default::inverse_rows<T>
                                 : isa_default::backward_rows<T>;
}

// Runs the row kernel over all B*C rows; at least ~32k elements per task.
template <typename T>
void run_rows(Kernel k, const CouplingArgs<T>& args) {
  const RowFn<T> fn = pick<T>(k);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(args.P, 1));
  at::parallel_for(0, args.B * args.C, grain, [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

template <typename T>
using FibreFn = void (*)(const CouplingArgs<T>&, int64_t, int64_t, T*);
template <typename T>
using FibreBwdFn = void (*)(const CouplingArgs<T>&, int64_t, int64_t, const FibreScratch<T>&);

template <typename T>
FibreFn<T> pick_fibres(bool reverse) {
#if defined(DADF_BEGIN_ISA_AVX2)
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return reverse ? isa_avx512::inverse_fibres<T> : isa_avx512::forward_fibres<T>;
    case Isa::kAvx2:
      return reverse ? isa_avx2::inverse_fibres<T> : isa_avx2::forward_fibres<T>;
    default:
      break;
  }
#endif
  return reverse ? isa_default::inverse_fibres<T> : isa_default::forward_fibres<T>;
}

template <typename T>
FibreBwdFn<T> pick_fibres_backward() {
#if defined(DADF_BEGIN_ISA_AVX2)
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return isa_avx512::backward_fibres<T>;
    case Isa::kAvx2:
      return isa_avx2::backward_fibres<T>;
    default:
      break;
  }
#endif
  return isa_default::backward_fibres<T>;
}

// A task takes at least ~16k elements (whole fibres): enough work to pay for waking a thread.
int64_t fibre_grain(int64_t C) { return std::max<int64_t>(1, 16384 / C); }

// Fibres per grad_g/grad_b partial row in the backward: a function of the shape only (so the
// sums do not depend on the thread count), one task's worth of work, and at most 256 blocks
// so that the partials stay small next to x.
int64_t fibre_rows_per_block(int64_t N, int64_t C) {
  return std::max<int64_t>(std::min<int64_t>(fibre_grain(C), kFibreFlush), (N + 255) / 256);
}

// Forward or inverse over all fibres; A.row_s gets one sum of s per fibre.
template <typename T>
void run_fibres(const CouplingArgs<T>& args) {
  const FibreFn<T> fn = pick_fibres<T>(args.reverse);
  at::parallel_for(0, args.B, fibre_grain(args.C), [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(static_cast<size_t>(args.C));
    fn(args, begin, end, scratch.data());
  });
}

// Backward over all fibre blocks; A.row_gg/row_gb get one partial row per block.
template <typename T>
void run_fibres_backward(const CouplingArgs<T>& args) {
  const FibreBwdFn<T> fn = pick_fibres_backward<T>();
  const int64_t blocks = (args.B + args.rows_per_block - 1) / args.rows_per_block;
  const size_t C = static_cast<size_t>(args.C);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> t_buf(3 * C);
    std::vector<double> d_buf(2 * C);
    const FibreScratch<T> scratch{t_buf.data(), t_buf.data() + C, t_buf.data() + 2 * C, d_buf.data(),
                                  d_buf.data() + C};
    fn(args, begin, end, scratch);
  });
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_fwd_cpu(const at::Tensor& x_, const at::Tensor& a_,
                                                           const at::Tensor& g_, const at::Tensor& b_,
                                                           const at::Tensor& perm_, double clamp, double a_scale,
                                                           bool reverse, bool compute_logdet) {
  check_coupling_args(kFwd, x_, a_, g_, b_, perm_, clamp, /*allow_fibres=*/true);
  TORCH_CHECK(x_.device().is_cpu(), kFwd, ": CPU kernel called with tensors on ", x_.device());
  TORCH_CHECK_TYPE(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kDouble, kFwd,
                   ": the CPU kernel supports float32 and float64, got ", x_.scalar_type());
  const at::Tensor x = x_.contiguous(), a = a_.contiguous(), g = g_.contiguous(), b = b_.contiguous();
  const at::Tensor perm = perm_.contiguous();
  const int64_t B = x.size(0), C = x.size(1), P = x.dim() == 2 ? 1 : x.size(2) * x.size(3);
  // one pixel per (sample, channel) row: the contiguous [B, C] fibre layout
  const bool fibres = P == 1;
  check_permutation_cpu(kFwd, perm.data_ptr<int64_t>(), C);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor logdet = at::empty({compute_logdet ? B : 0}, x.options());
  if (x.numel() == 0) {
    if (compute_logdet) logdet.zero_();
    return {y, logdet};
  }
  std::vector<double> row_s(static_cast<size_t>(fibres ? B : B * C));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling_fwd_cpu", [&] {
    using T = scalar_t;
    CouplingArgs<T> args{};
    args.x = x.data_ptr<T>();
    args.a = a.data_ptr<T>();
    args.g = g.data_ptr<T>();
    args.b = b.data_ptr<T>();
    args.perm = perm.data_ptr<int64_t>();
    args.y = y.data_ptr<T>();
    args.row_s = row_s.data();
    args.B = B;
    args.C = C;
    args.P = P;
    args.clamp = static_cast<T>(clamp);
    args.a_scale = static_cast<T>(a_scale);
    args.reverse = reverse;
    if (fibres) {
      run_fibres<T>(args);
    } else {
      run_rows<T>(reverse ? Kernel::kInverse : Kernel::kForward, args);
    }
    if (compute_logdet) {
      const T* gp = g.data_ptr<T>();
      double log_g = 0.0;
      for (int64_t c = 0; c < C; ++c) log_g += std::log(static_cast<double>(gp[c]));
      log_g *= static_cast<double>(P);
      T* out = logdet.data_ptr<T>();
      for (int64_t n = 0; n < B; ++n) {
        double acc = 0.0;
        if (fibres) {
          acc = row_s[n];
        } else {
          for (int64_t i = 0; i < C; ++i) acc += row_s[n * C + i];  // fixed order
        }
        acc += log_g;
        out[n] = static_cast<T>(reverse ? -acc : acc);
      }
    }
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> affine_coupling_bwd_cpu(
    const at::Tensor& grad_out_, const std::optional<at::Tensor>& grad_logdet_, const at::Tensor& x_,
    const at::Tensor& a_, const at::Tensor& g_, const at::Tensor& b_, const at::Tensor& perm_, double clamp,
    double a_scale, bool reverse) {
  check_coupling_args(kBwd, x_, a_, g_, b_, perm_, clamp, /*allow_fibres=*/true);
  TORCH_CHECK(x_.device().is_cpu(), kBwd, ": CPU kernel called with tensors on ", x_.device());
  TORCH_CHECK_TYPE(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kDouble, kBwd,
                   ": the CPU kernel supports float32 and float64, got ", x_.scalar_type());
  check_like(grad_out_, x_, kBwd, "grad_out", "x");
  TORCH_CHECK_VALUE(grad_out_.sizes() == x_.sizes(), kBwd, ": grad_out must have the shape of x ", x_.sizes(),
                    ", got ", grad_out_.sizes());
  const int64_t B = x_.size(0), C = x_.size(1), P = x_.dim() == 2 ? 1 : x_.size(2) * x_.size(3);
  const bool fibres = P == 1;
  // fibres: one partial row of grad_g/grad_b per block of fibres; images: one per sample
  const int64_t rows_per_block = fibres ? fibre_rows_per_block(B, C) : 1;
  const int64_t partial_rows = (B + rows_per_block - 1) / rows_per_block;
  at::Tensor gl;
  if (grad_logdet_.has_value() && grad_logdet_->defined()) {
    gl = grad_logdet_->contiguous();
    check_like(gl, x_, kBwd, "grad_logdet", "x");
    TORCH_CHECK_VALUE(gl.dim() == 1 && gl.size(0) == B, kBwd, ": grad_logdet must have shape [", B, "], got ",
                      gl.sizes());
  }
  const at::Tensor go = grad_out_.contiguous(), x = x_.contiguous(), a = a_.contiguous();
  const at::Tensor g = g_.contiguous(), b = b_.contiguous(), perm = perm_.contiguous();
  check_permutation_cpu(kBwd, perm.data_ptr<int64_t>(), C);
  at::Tensor gx = at::empty(x.sizes(), x.options());
  at::Tensor ga = at::empty(a.sizes(), a.options());  // every row is written: perm is a permutation
  at::Tensor gg = at::empty({C}, x.options());
  at::Tensor gb = at::empty({C}, x.options());
  std::vector<double> row_gg(static_cast<size_t>(partial_rows * C), 0.0);
  std::vector<double> row_gb(static_cast<size_t>(partial_rows * C), 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling_bwd_cpu", [&] {
    using T = scalar_t;
    const T* glp = gl.defined() ? gl.data_ptr<T>() : nullptr;
    if (x.numel() > 0) {
      CouplingArgs<T> args{};
      args.x = x.data_ptr<T>();
      args.a = a.data_ptr<T>();
      args.g = g.data_ptr<T>();
      args.b = b.data_ptr<T>();
      args.perm = perm.data_ptr<int64_t>();
      args.go = go.data_ptr<T>();
      args.gl = glp;
      args.gx = gx.data_ptr<T>();
      args.ga = ga.data_ptr<T>();
      args.row_gg = row_gg.data();
      args.row_gb = row_gb.data();
      args.B = B;
      args.C = C;
      args.P = P;
      args.clamp = static_cast<T>(clamp);
      args.a_scale = static_cast<T>(a_scale);
      args.reverse = reverse;
      args.rows_per_block = rows_per_block;
      if (fibres) {
        run_fibres_backward<T>(args);
      } else {
        run_rows<T>(Kernel::kBackward, args);
      }
    }
    double gl_total = 0.0;
    if (glp) {
      for (int64_t n = 0; n < B; ++n) gl_total += static_cast<double>(glp[n]);
    }
    const T* gp = g.data_ptr<T>();
    T* ggp = gg.data_ptr<T>();
    T* gbp = gb.data_ptr<T>();
    const double sign = reverse ? -1.0 : 1.0;
    for (int64_t c = 0; c < C; ++c) {
      double sg = 0.0, sb = 0.0;
      for (int64_t r = 0; r < partial_rows; ++r) {  // fixed order over the batch
        sg += row_gg[r * C + c];
        sb += row_gb[r * C + c];
      }
      sg += sign * gl_total * static_cast<double>(P) / static_cast<double>(gp[c]);
      ggp[c] = static_cast<T>(sg);
      gbp[c] = static_cast<T>(sb);
    }
  });
  return {gx, ga, gg, gb};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(dadf_fast, CPU, m) {
  m.impl("affine_coupling_fwd", &cpu::affine_coupling_fwd_cpu);
  m.impl("affine_coupling_bwd", &cpu::affine_coupling_bwd_cpu);
}

}  // namespace dadf_fast
