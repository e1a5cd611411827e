// The inner loop of the CPU nearest_index kernel (cpu/knn_rows.h), compiled once per
// instruction set (baseline / AVX2+FMA / AVX-512, see cpu_isa.h) and picked at run time.
// Include this header after every library header of the translation unit.
#pragma once

#include <cstdint>

#include "cpu/cpu_isa.h"

namespace dadf_fast {
namespace cpu {
namespace {  // internal linkage: each translation unit keeps its own copies

namespace knn_isa_default {
#include "cpu/knn_rows.h"
}  // namespace knn_isa_default
#if defined(DADF_BEGIN_ISA_AVX2)
DADF_BEGIN_ISA_AVX2
namespace knn_isa_avx2 {
#include "cpu/knn_rows.h"
}  // namespace knn_isa_avx2
DADF_END_ISA
DADF_BEGIN_ISA_AVX512
namespace knn_isa_avx512 {
#include "cpu/knn_rows.h"
}  // namespace knn_isa_avx512
DADF_END_ISA
#endif

template <typename T>
using ScanRowFn = void (*)(const T*, int64_t, int64_t, const T*, const T*, int64_t, T, T, T, T*, int64_t*);

template <typename T>
ScanRowFn<T> scan_row_fn() {
#if defined(DADF_BEGIN_ISA_AVX2)
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return knn_isa_avx512::scan_row<T>;
    case Isa::kAvx2:
      return knn_isa_avx2::scan_row<T>;
    default:
      break;
  }
#endif
  return knn_isa_default::scan_row<T>;
}

}  // namespace
}  // namespace cpu
}  // namespace dadf_fast
