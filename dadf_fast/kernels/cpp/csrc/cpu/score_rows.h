// Inner loops of the CPU multiscale_score and flow_nll kernels (no include guard on purpose).
//
// multiscale_score.cpp and flow_nll.cpp include this file several times, each time inside
// its own namespace and instruction-set region (baseline, AVX2+FMA, AVX-512) after every
// library header, so that each copy is compiled for its ISA.  Keep it free of #includes
// and of library templates.  Sums run in T over short blocks (vectorised) and then in
// double, always in the same order (deterministic).

// sum_k z[k]^2 for k < len.
template <typename T>
double sum_squares(const T* __restrict__ z, int64_t len) {
  double acc = 0.0;
  for (int64_t p0 = 0; p0 < len; p0 += kSumBlock) {
    const int64_t p1 = len < p0 + kSumBlock ? len : p0 + kSumBlock;
    T part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t p = p0; p < p1; ++p) part += z[p] * z[p];
    acc += static_cast<double>(part);
  }
  return acc;
}

// out[k] = scale * z[k]
template <typename T>
void scale_copy(const T* __restrict__ z, T scale, T* __restrict__ out, int64_t len) {
#pragma omp simd
  for (int64_t p = 0; p < len; ++p) out[p] = scale * z[p];
}

// acc[k] = sum_c z[c*stride + k]^2 for k < len (len <= kPixBlock): channels in blocks of
// kChannelBlock summed in T, then added in double.
template <typename T>
void channel_sum_squares(const T* __restrict__ z, int64_t C, int64_t stride, int64_t len, double* __restrict__ acc) {
  T part[kPixBlock];
  for (int64_t k = 0; k < len; ++k) acc[k] = 0.0;
  for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
    const int64_t c1 = C < c0 + kChannelBlock ? C : c0 + kChannelBlock;
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) part[k] = 0;
    for (int64_t c = c0; c < c1; ++c) {
      const T* __restrict__ zr = z + c * stride;
#pragma omp simd
      for (int64_t k = 0; k < len; ++k) part[k] += zr[k] * zr[k];
    }
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) acc[k] += static_cast<double>(part[k]);
  }
}

// Horizontal pass of the bilinear resampling of one source row:
// out[ox] = l0[ox] * row[i0[ox]] + l1[ox] * row[i1[ox]].
template <typename T>
void resample_row(const T* __restrict__ row, const int64_t* __restrict__ i0, const int64_t* __restrict__ i1,
                  const T* __restrict__ l0, const T* __restrict__ l1, T* __restrict__ out, int64_t W) {
#pragma omp simd
  for (int64_t ox = 0; ox < W; ++ox) out[ox] = l0[ox] * row[i0[ox]] + l1[ox] * row[i1[ox]];
}

// Vertical pass, accumulated over scales: out = r0*ly0 + r1*ly1 (first scale) or
// out += r0*ly0 + r1*ly1.
template <typename T>
void blend_rows(const T* __restrict__ r0, const T* __restrict__ r1, T ly0, T ly1, T* __restrict__ out, int64_t W,
                bool first) {
  if (first) {
#pragma omp simd
    for (int64_t ox = 0; ox < W; ++ox) out[ox] = r0[ox] * ly0 + r1[ox] * ly1;
  } else {
#pragma omp simd
    for (int64_t ox = 0; ox < W; ++ox) out[ox] += r0[ox] * ly0 + r1[ox] * ly1;
  }
}

// out = 1 - out / n_scales; returns the row's max (NaN if any is NaN) and adds its sum to
// *sum.
template <typename T>
T finish_row(T* __restrict__ out, int64_t W, T n_scales, double* sum) {
  T m = out[0];  // W >= 1
  bool has_nan = false;
  double acc = 0.0;
  for (int64_t p0 = 0; p0 < W; p0 += kSumBlock) {
    const int64_t p1 = W < p0 + kSumBlock ? W : p0 + kSumBlock;
    T part = 0;
    T mx = static_cast<T>(1) - out[p0] / n_scales;
    bool nan_part = false;
#pragma omp simd reduction(+ : part) reduction(max : mx) reduction(|| : nan_part)
    for (int64_t p = p0; p < p1; ++p) {
      const T v = static_cast<T>(1) - out[p] / n_scales;
      out[p] = v;
      part += v;
      mx = v > mx ? v : mx;
      nan_part = nan_part || (v != v);
    }
    acc += static_cast<double>(part);
    m = (p0 == 0 || mx > m) ? mx : m;
    has_nan = has_nan || nan_part;
  }
  *sum += acc;
  return has_nan ? static_cast<T>(NAN) : m;
}

template double sum_squares<float>(const float*, int64_t);
template double sum_squares<double>(const double*, int64_t);
template void scale_copy<float>(const float*, float, float*, int64_t);
template void scale_copy<double>(const double*, double, double*, int64_t);
template void channel_sum_squares<float>(const float*, int64_t, int64_t, int64_t, double*);
template void channel_sum_squares<double>(const double*, int64_t, int64_t, int64_t, double*);
template void resample_row<float>(const float*, const int64_t*, const int64_t*, const float*, const float*, float*,
                                  int64_t);
template void resample_row<double>(const double*, const int64_t*, const int64_t*, const double*, const double*,
                                   double*, int64_t);
template void blend_rows<float>(const float*, const float*, float, float, float*, int64_t, bool);
template void blend_rows<double>(const double*, const double*, double, double, double*, int64_t, bool);
template float finish_row<float>(float*, int64_t, float, double*);
template double finish_row<double>(double*, int64_t, double, double*);
