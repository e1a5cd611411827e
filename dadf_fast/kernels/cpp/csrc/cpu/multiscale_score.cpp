// CPU kernel of multi-scale anomaly scoring:
//   p_s = exp(-0.5 * mean_c z_s^2)                      (low resolution, [B, h_s, w_s])
//   map = 1 - (sum_s bilinear_up(p_s)) / S             (align_corners=False, as F.interpolate)
//   score = max (or mean) of map per image.
//
// The bilinear resampling is separable and done in ATen's order: each source row of p_s is
// first resampled horizontally to the output width W ([B, h_s, W], at most the height of the
// scale: no full-resolution temporary per scale), then every output row is blended
// vertically from two of those rows, accumulated over the scales, finished (1 - mean) and
// reduced (max / sum) in one pass over the output pixels.  Reductions are per output row,
// combined in a fixed order (deterministic).  Inner loops: cpu/score_rows.h (vectorised,
// one copy per instruction set).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "dadf_common.h"
// after every library header (instruction-set regions):
#include "cpu/score_kernels.h"

namespace dadf_fast {
namespace cpu {
namespace {

constexpr const char* kOp = "dadf_fast::multiscale_score";

template <typename T>
struct Axis {  // resampling taps of one axis of one scale
  std::vector<int64_t> i0, i1;
  std::vector<T> l0, l1;
};

template <typename T>
Axis<T> make_axis(int64_t in_size, int64_t out_size) {
  Axis<T> ax;
  ax.i0.resize(out_size);
  ax.i1.resize(out_size);
  ax.l0.resize(out_size);
  ax.l1.resize(out_size);
  for (int64_t o = 0; o < out_size; ++o) {
    const LinearTap<T> t = linear_tap<T>(o, in_size, out_size);
    ax.i0[o] = t.i0;
    ax.i1[o] = t.i1;
    ax.l0[o] = t.l0;
    ax.l1[o] = t.l1;
  }
  return ax;
}

// Maps a flat task index onto (scale, index within the scale) given per-scale counts.
struct TaskRanges {
  std::vector<int64_t> start;  // start[s] = first task of scale s; start[S] = total
  explicit TaskRanges(const std::vector<int64_t>& counts) : start(counts.size() + 1, 0) {
    for (size_t s = 0; s < counts.size(); ++s) start[s + 1] = start[s] + counts[s];
  }
  int64_t total() const { return start.back(); }
  void locate(int64_t task, int64_t* s, int64_t* local) const {
    int64_t k = 0;
    while (task >= start[k + 1]) ++k;
    *s = k;
    *local = task - start[k];
  }
};

template <typename T>
void score_kernel(const std::vector<at::Tensor>& zs, T* map, T* score, int64_t H, int64_t W, bool reduce_max) {
  const ScoreFns<T> fns = score_fns<T>();
  const int64_t S = static_cast<int64_t>(zs.size());
  const int64_t B = zs[0].size(0);
  std::vector<int64_t> Cs(S), hs(S), ws(S), pix_blocks(S), src_rows(S);
  std::vector<at::Tensor> ps(S), rows(S);  // p: [B, h*w]; rows: [B, h, W] (horizontally resampled p)
  std::vector<Axis<T>> xtaps(S), ytaps(S);
  for (int64_t s = 0; s < S; ++s) {
    Cs[s] = zs[s].size(1);
    hs[s] = zs[s].size(2);
    ws[s] = zs[s].size(3);
    pix_blocks[s] = B * ((hs[s] * ws[s] + kPixBlock - 1) / kPixBlock);
    src_rows[s] = B * hs[s];
    ps[s] = at::empty({B, hs[s] * ws[s]}, zs[s].options());
    rows[s] = at::empty({B, hs[s], W}, zs[s].options());
    xtaps[s] = make_axis<T>(ws[s], W);
    ytaps[s] = make_axis<T>(hs[s], H);
  }

  // 1. p = exp(-0.5 * mean_c z^2), all scales in one parallel loop over pixel blocks.
  const TaskRanges blocks(pix_blocks);
  at::parallel_for(0, blocks.total(), 1, [&](int64_t begin, int64_t end) {
    double acc[kPixBlock];
    for (int64_t task = begin; task < end; ++task) {
      int64_t s, local;
      blocks.locate(task, &s, &local);
      const int64_t HW = hs[s] * ws[s], C = Cs[s];
      const int64_t per_image = (HW + kPixBlock - 1) / kPixBlock;
      const int64_t n = local / per_image, lo = (local % per_image) * kPixBlock;
      const int64_t len = std::min(kPixBlock, HW - lo);
      fns.channel_sum_squares(zs[s].data_ptr<T>() + n * C * HW + lo, C, HW, len, acc);
      T* pr = ps[s].data_ptr<T>() + n * HW + lo;
      const double cd = static_cast<double>(C);
      for (int64_t k = 0; k < len; ++k) {
        const T mean = static_cast<T>(acc[k] / cd);
        pr[k] = std::exp(static_cast<T>(-0.5) * mean);
      }
    }
  });

  // 2. Horizontal pass: every source row of every scale resampled to width W.
  const TaskRanges srows(src_rows);
  at::parallel_for(0, srows.total(), std::max<int64_t>(1, 4096 / W), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      int64_t s, r;
      srows.locate(task, &s, &r);
      const Axis<T>& xt = xtaps[s];
      fns.resample_row(ps[s].data_ptr<T>() + r * ws[s], xt.i0.data(), xt.i1.data(), xt.l0.data(), xt.l1.data(),
                       rows[s].data_ptr<T>() + r * W, W);
    }
  });
  std::vector<const T*> rows_ptr(S);
  for (int64_t s = 0; s < S; ++s) rows_ptr[s] = rows[s].data_ptr<T>();

  // 3. Vertical blend of every scale into each output row, finish and reduce the row.
  std::vector<T> row_max(static_cast<size_t>(B * H));
  std::vector<double> row_sum(static_cast<size_t>(B * H), 0.0);
  const T n_scales = static_cast<T>(S);
  at::parallel_for(0, B * H, std::max<int64_t>(1, 8192 / W), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, oy = row % H;
      T* out = map + row * W;
      for (int64_t s = 0; s < S; ++s) {
        const Axis<T>& yt = ytaps[s];
        const T* base = rows_ptr[s] + n * hs[s] * W;
        fns.blend_rows(base + yt.i0[oy] * W, base + yt.i1[oy] * W, yt.l0[oy], yt.l1[oy], out, W, s == 0);
      }
      row_max[row] = fns.finish_row(out, W, n_scales, &row_sum[row]);
    }
  });
  for (int64_t n = 0; n < B; ++n) {  // fixed order
    if (reduce_max) {
      T m = row_max[n * H];
      for (int64_t oy = 1; oy < H; ++oy) {
        const T v = row_max[n * H + oy];
        m = (m != m || v != v) ? static_cast<T>(NAN) : (v > m ? v : m);
      }
      score[n] = m;
    } else {
      double acc = 0.0;
      for (int64_t oy = 0; oy < H; ++oy) acc += row_sum[n * H + oy];
      score[n] = static_cast<T>(acc / static_cast<double>(H * W));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> multiscale_score_cpu(at::TensorList zs_, int64_t H, int64_t W,
                                                        c10::string_view reduce) {
  const bool reduce_max = check_score_args(kOp, zs_, H, W, std::string(reduce));
  const at::Tensor& z0 = zs_[0];
  TORCH_CHECK(z0.device().is_cpu(), kOp, ": CPU kernel called with tensors on ", z0.device());
  TORCH_CHECK_TYPE(z0.scalar_type() == at::kFloat || z0.scalar_type() == at::kDouble, kOp,
                   ": the CPU kernel supports float32 and float64, got ", z0.scalar_type());
  std::vector<at::Tensor> zs;
  zs.reserve(zs_.size());
  for (const at::Tensor& z : zs_) zs.push_back(z.contiguous());
  const int64_t B = z0.size(0);
  at::Tensor map = at::empty({B, 1, H, W}, z0.options());
  at::Tensor score = at::empty({B}, z0.options());
  AT_DISPATCH_FLOATING_TYPES(z0.scalar_type(), "multiscale_score_cpu", [&] {
    score_kernel<scalar_t>(zs, map.data_ptr<scalar_t>(), score.data_ptr<scalar_t>(), H, W, reduce_max);
  });
  return {map, score};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(dadf_fast, CPU, m) { m.impl("multiscale_score", &cpu::multiscale_score_cpu); }

}  // namespace dadf_fast
