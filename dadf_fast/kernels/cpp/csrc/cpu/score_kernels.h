// Vectorised inner loops of the CPU multiscale_score and flow_nll kernels, compiled once
// per instruction set (baseline / AVX2+FMA / AVX-512, see cpu_isa.h) and picked at run time.
// Include this header after every library header of the translation unit.
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu/cpu_isa.h"

namespace dadf_fast {
namespace cpu {
namespace {  // internal linkage: each translation unit keeps its own copies

// Block lengths: partial sums in T over kSumBlock elements (or kChannelBlock channels),
// then in double; kPixBlock pixels per channel-sum task.
constexpr int64_t kSumBlock = 256;
constexpr int64_t kChannelBlock = 16;
constexpr int64_t kPixBlock = 512;

namespace score_isa_default {
#include "cpu/score_rows.h"
}  // namespace score_isa_default
#if defined(DADF_BEGIN_ISA_AVX2)
DADF_BEGIN_ISA_AVX2
namespace score_isa_avx2 {
#include "cpu/score_rows.h"
}  // namespace score_isa_avx2
DADF_END_ISA
DADF_BEGIN_ISA_AVX512
namespace score_isa_avx512 {
#include "cpu/score_rows.h"
}  // namespace score_isa_avx512
DADF_END_ISA
#endif

template <typename T>
struct ScoreFns {
  double (*sum_squares)(const T*, int64_t);
  void (*scale_copy)(const T*, T, T*, int64_t);
  void (*channel_sum_squares)(const T*, int64_t, int64_t, int64_t, double*);
  void (*resample_row)(const T*, const int64_t*, const int64_t*, const T*, const T*, T*, int64_t);
  void (*blend_rows)(const T*, const T*, T, T, T*, int64_t, bool);
  T (*finish_row)(T*, int64_t, T, double*);
};

#define DADF_SCORE_FNS(ns)                                                                              \
  ScoreFns<T> {                                                                                         \
    ns::sum_squares<T>, ns::scale_copy<T>, ns::channel_sum_squares<T>, ns::resample_row<T>, ns::blend_rows<T>, \
        ns::finish_row<T>                                                                               \
  }

template <typename T>
ScoreFns<T> score_fns() {
#if defined(DADF_BEGIN_ISA_AVX2)
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return DADF_SCORE_FNS(score_isa_avx512);
    case Isa::kAvx2:
      return DADF_SCORE_FNS(score_isa_avx2);
    default:
      break;
  }
#endif
  return DADF_SCORE_FNS(score_isa_default);
}

#undef DADF_SCORE_FNS

}  // namespace
}  // namespace cpu
}  // namespace dadf_fast
