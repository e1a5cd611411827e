// Runtime choice of the instruction set for the CPU kernels that are compiled several times
// (baseline x86-64 / AVX2+FMA / AVX-512), so one binary runs everywhere and uses the widest
// vectors the machine has.  DADF_FAST_CPU_ISA=default|avx2|avx512 caps the choice (tests use
// it to exercise every copy).
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DADF_FAST_X86_MULTIVERSION 1
#else
#define DADF_FAST_X86_MULTIVERSION 0
#endif

namespace dadf_fast {
namespace cpu {

enum class Isa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

inline Isa detect_isa() {
#if DADF_FAST_X86_MULTIVERSION
  __builtin_cpu_init();
  Isa best = Isa::kDefault;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
  if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
    best = Isa::kAvx512;
  const char* cap = std::getenv("DADF_FAST_CPU_ISA");
  if (cap != nullptr) {
    Isa want = best;
    if (std::strcmp(cap, "default") == 0) want = Isa::kDefault;
    else if (std::strcmp(cap, "avx2") == 0) want = Isa::kAvx2;
    else if (std::strcmp(cap, "avx512") == 0) want = Isa::kAvx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
#else
  return Isa::kDefault;
#endif
}

inline Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

}  // namespace cpu
}  // namespace dadf_fast

// DADF_BEGIN_ISA_AVX2 / DADF_END_ISA: compile the functions in between for that ISA.
// Everything between must be self-contained code (no header includes), so that no inline
// function of a library header gets emitted with wider instructions than the baseline.
#if DADF_FAST_X86_MULTIVERSION && defined(__clang__)
#define DADF_BEGIN_ISA_AVX2 \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma\"))), apply_to = function)")
#define DADF_BEGIN_ISA_AVX512                                                                       \
  _Pragma(                                                                                          \
      "clang attribute push(__attribute__((target(\"avx2,fma,avx512f,avx512dq,avx512vl,avx512bw\"))), " \
      "apply_to = function)")
#define DADF_END_ISA _Pragma("clang attribute pop")
#elif DADF_FAST_X86_MULTIVERSION
#define DADF_BEGIN_ISA_AVX2 _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma\")")
#define DADF_BEGIN_ISA_AVX512 \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,avx512f,avx512dq,avx512vl,avx512bw\")")
#define DADF_END_ISA _Pragma("GCC pop_options")
#endif
