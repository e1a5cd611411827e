// Inner loops of the CPU nearest_index kernel (no include guard on purpose).
//
// nearest_index.cpp includes this file several times through knn_kernels.h, each time inside
// its own namespace and instruction-set region (baseline, AVX2+FMA, AVX-512) after every
// library header, so that each copy is compiled for its ISA.  Keep it free of #includes and
// of library templates.

// sum_j (a_j - b_j)^2 (the lanes' partial sums are added in the compiler's order: an exact
// distance is compared with other exact distances and bounds, never with the reference's)
template <typename T>
T squared_distance(const T* __restrict__ a, const T* __restrict__ b, int64_t d) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < d; ++j) {
    const T diff = a[j] - b[j];
    acc += diff * diff;
  }
  return acc;
}

// One query row against one chunk of bounds s[0:n) (each row's lower bound of the squared
// distance minus |c_q|^2) of the memory rows m0 ... m0 + n - 1; *best / *index hold the
// running best squared distance and its row.  While no exact distance is known yet (the
// first chunk; *best == inf) the smallest bound's row is measured first, which makes the
// running best tight from the first chunk on.  Then one pass of compares against
// thr = best - |c_q|^2 + tol, 16 at a time (a vectorised any-below test; blocks holding a
// candidate are rare), measuring each candidate exactly and tightening thr as it goes.
template <typename T>
void scan_row(const T* __restrict__ s, int64_t n, int64_t m0, const T* __restrict__ qrow,
              const T* __restrict__ memory, int64_t dim, T qnorm, T tol, T inf, T* best, int64_t* index) {
  T b = *best;
  int64_t bi = *index;
  if (!(b < inf)) {
    T mv = s[0];
#pragma omp simd reduction(min : mv)
    for (int64_t m = 1; m < n; ++m) mv = s[m] < mv ? s[m] : mv;
    int64_t am = 0;
    while (am < n && !(s[am] == mv)) ++am;
    if (am == n) am = 0;  // NaN bounds (a NaN query): any row, its distance is NaN
    const T d2 = squared_distance(qrow, memory + (m0 + am) * dim, dim);
    if (d2 < b) {
      b = d2;
      bi = m0 + am;
    }
  }
  T thr = b - qnorm + tol;
  for (int64_t m = 0; m < n; m += 16) {
    const int64_t hi = m + 16 <= n ? m + 16 : n;
    if (hi - m == 16) {
      int any = 0;
#pragma omp simd reduction(| : any)
      for (int l = 0; l < 16; ++l) any |= (s[m + l] < thr) ? 1 : 0;
      if (!any) continue;
    }
    for (int64_t k = m; k < hi; ++k) {
      if (s[k] < thr && m0 + k != bi) {
        const T d2 = squared_distance(qrow, memory + (m0 + k) * dim, dim);
        if (d2 < b) {
          b = d2;
          bi = m0 + k;
          thr = b - qnorm + tol;
        }
      }
    }
  }
  *best = b;
  *index = bi;
}
