// Fibre kernels of the CPU affine coupling: x [N, C] (no include guard on purpose).
//
// Included several times by affine_coupling.cpp, like coupling_rows.h (one copy per
// instruction set, inside its namespace; keep it free of #includes and library templates).
//
// Layout.  A fibre is one row n of x [N, C] (or of a [N, C, 1, 1] view): its C channels are
// contiguous, and so are its subnet outputs a[n] = (s-part [C//2], t-part [C//2]).  The
// image kernels (coupling_rows.h) loop over the pixels of one (sample, channel) row, which
// here would be one element per row.  These kernels instead keep the channel loop innermost:
// for each fibre they read x[n], a[n] in order, compute the coupling and the global affine
// for all channels in channel order (an `omp simd` loop over contiguous memory, so tanh/exp
// are vectorised across channels), and apply the permutation as a gather from (or scatter
// into) a scratch row of C values, which stays in L1, so every global read and write is
// sequential.  Work is split over fibres (rows of the batch).
//
// Reductions.  The log-det of fibre n is its own sum over channels (blocks of kRowBlock in
// T, then double).  grad_g / grad_b are sums over fibres: each block of A.rows_per_block
// fibres (a size fixed by the shape, not by the thread count) accumulates per channel in T
// over at most kFibreFlush fibres, then in double, and writes one partial row
// A.row_gg/row_gb[block * C + c]; the caller adds the blocks in a fixed order, so results do
// not depend on the number of threads.

// y[n, i] = v[perm[i]], v = u * g + b in channel order; A.row_s[n] = sum of s over channels.
template <typename T>
void forward_fibres(const CouplingArgs<T>& A, int64_t begin, int64_t end, T* __restrict__ v) {
  const int64_t C = A.C, c2 = C / 2, c1 = C - c2;
  const T clamp = A.clamp, a_scale = A.a_scale;
  const T* __restrict__ g = A.g;
  const T* __restrict__ b = A.b;
  for (int64_t n = begin; n < end; ++n) {
    const T* __restrict__ xr = A.x + n * C;
    const T* __restrict__ as = A.a + n * 2 * c2;
    const T* __restrict__ at = as + c2;
    T* __restrict__ yr = A.y + n * C;
#pragma omp simd
    for (int64_t c = 0; c < c1; ++c) v[c] = xr[c] * g[c] + b[c];
    const T* __restrict__ x2 = xr + c1;
    const T* __restrict__ g2 = g + c1;
    const T* __restrict__ b2 = b + c1;
    T* __restrict__ v2 = v + c1;
    double acc = 0.0;
    for (int64_t j0 = 0; j0 < c2; j0 += kRowBlock) {
      const int64_t j1 = c2 < j0 + kRowBlock ? c2 : j0 + kRowBlock;
      T part = 0;
#pragma omp simd reduction(+ : part)
      for (int64_t j = j0; j < j1; ++j) {
        const T s = clamp * Math<T>::tanh(a_scale * as[j]);
        const T u = x2[j] * Math<T>::exp(s) + a_scale * at[j];
        v2[j] = u * g2[j] + b2[j];
        part += s;
      }
      acc += static_cast<double>(part);
    }
    for (int64_t i = 0; i < C; ++i) yr[i] = v[A.perm[i]];
    A.row_s[n] = acc;
  }
}

// The inverse: w[perm[i]] = y[n, i] (channel order), then x[n, c] from w[c].
template <typename T>
void inverse_fibres(const CouplingArgs<T>& A, int64_t begin, int64_t end, T* __restrict__ w) {
  const int64_t C = A.C, c2 = C / 2, c1 = C - c2;
  const T clamp = A.clamp, a_scale = A.a_scale;
  const T* __restrict__ g = A.g;
  const T* __restrict__ b = A.b;
  for (int64_t n = begin; n < end; ++n) {
    const T* __restrict__ yr = A.x + n * C;  // the op's input is the step output here
    const T* __restrict__ as = A.a + n * 2 * c2;
    const T* __restrict__ at = as + c2;
    T* __restrict__ xr = A.y + n * C;
    for (int64_t i = 0; i < C; ++i) w[A.perm[i]] = yr[i];
#pragma omp simd
    for (int64_t c = 0; c < c1; ++c) xr[c] = (w[c] - b[c]) / g[c];
    const T* __restrict__ w2 = w + c1;
    const T* __restrict__ g2 = g + c1;
    const T* __restrict__ b2 = b + c1;
    T* __restrict__ x2 = xr + c1;
    double acc = 0.0;
    for (int64_t j0 = 0; j0 < c2; j0 += kRowBlock) {
      const int64_t j1 = c2 < j0 + kRowBlock ? c2 : j0 + kRowBlock;
      T part = 0;
#pragma omp simd reduction(+ : part)
      for (int64_t j = j0; j < j1; ++j) {
        const T s = clamp * Math<T>::tanh(a_scale * as[j]);
        const T u = (w2[j] - b2[j]) / g2[j];
        x2[j] = (u - a_scale * at[j]) * Math<T>::exp(-s);
        part += s;
      }
      acc += static_cast<double>(part);
    }
    A.row_s[n] = acc;
  }
}

// Adds the T partials into the double sums and clears them.
template <typename T>
void flush_fibre_partials(const FibreScratch<T>& S, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    S.acc_g[c] += static_cast<double>(S.part_g[c]);
    S.acc_b[c] += static_cast<double>(S.part_b[c]);
    S.part_g[c] = T(0);
    S.part_b[c] = T(0);
  }
}

// Forward-direction backward of fibres [begin, end) (the same formulas as backward_rows).
template <typename T>
void backward_fibres_fwd(const CouplingArgs<T>& A, int64_t begin, int64_t end, const FibreScratch<T>& S) {
  const int64_t C = A.C, c2 = C / 2, c1 = C - c2;
  const T clamp = A.clamp, a_scale = A.a_scale, dsda = A.clamp * A.a_scale;
  const T* __restrict__ g = A.g;
  T* __restrict__ gv = S.row;
  T* __restrict__ pg = S.part_g;
  T* __restrict__ pb = S.part_b;
  for (int64_t n = begin; n < end; ++n) {
    const T gln = A.gl ? A.gl[n] : T(0);
    const T* __restrict__ gy = A.go + n * C;
    const T* __restrict__ xr = A.x + n * C;
    const T* __restrict__ as = A.a + n * 2 * c2;
    const T* __restrict__ at = as + c2;
    T* __restrict__ gxr = A.gx + n * C;
    T* __restrict__ gas = A.ga + n * 2 * c2;
    T* __restrict__ gat = gas + c2;
    // gradient of u*g + b in channel order: gv[perm[i]] = grad_y[n, i]
    for (int64_t i = 0; i < C; ++i) gv[A.perm[i]] = gy[i];
#pragma omp simd
    for (int64_t c = 0; c < c1; ++c) {
      gxr[c] = gv[c] * g[c];
      pg[c] += gv[c] * xr[c];
      pb[c] += gv[c];
    }
    const T* __restrict__ x2 = xr + c1;
    const T* __restrict__ g2 = g + c1;
    const T* __restrict__ gv2 = gv + c1;
    T* __restrict__ gx2 = gxr + c1;
    T* __restrict__ pg2 = pg + c1;
    T* __restrict__ pb2 = pb + c1;
#pragma omp simd
    for (int64_t j = 0; j < c2; ++j) {
      const T th = Math<T>::tanh(a_scale * as[j]);
      const T e = Math<T>::exp(clamp * th);
      const T xe = x2[j] * e;
      const T u = xe + a_scale * at[j];
      const T gu = gv2[j] * g2[j];
      gx2[j] = gu * e;
      gas[j] = (gu * xe + gln) * dsda * (T(1) - th * th);
      gat[j] = gu * a_scale;
      pg2[j] += gv2[j] * u;
      pb2[j] += gv2[j];
    }
    if ((n - begin + 1) % kFibreFlush == 0) flush_fibre_partials(S, C);
  }
}

// Reverse-direction backward: A.x is the step output y, A.go the gradient of the op's
// output (the step input, channel order), A.gx the gradient of y (output order).
template <typename T>
void backward_fibres_rev(const CouplingArgs<T>& A, int64_t begin, int64_t end, const FibreScratch<T>& S) {
  const int64_t C = A.C, c2 = C / 2, c1 = C - c2;
  const T clamp = A.clamp, a_scale = A.a_scale, dsda = A.clamp * A.a_scale;
  const T* __restrict__ g = A.g;
  const T* __restrict__ b = A.b;
  T* __restrict__ w = S.row;  // y in channel order, overwritten by grad_y in channel order
  T* __restrict__ pg = S.part_g;
  T* __restrict__ pb = S.part_b;
  for (int64_t n = begin; n < end; ++n) {
    const T gln = A.gl ? A.gl[n] : T(0);
    const T* __restrict__ yr = A.x + n * C;
    const T* __restrict__ gor = A.go + n * C;
    const T* __restrict__ as = A.a + n * 2 * c2;
    const T* __restrict__ at = as + c2;
    T* __restrict__ gyr = A.gx + n * C;
    T* __restrict__ gas = A.ga + n * 2 * c2;
    T* __restrict__ gat = gas + c2;
    for (int64_t i = 0; i < C; ++i) w[A.perm[i]] = yr[i];
#pragma omp simd
    for (int64_t c = 0; c < c1; ++c) {
      const T u = (w[c] - b[c]) / g[c];
      const T gv = gor[c] / g[c];
      w[c] = gv;
      pg[c] += gv * u;
      pb[c] += gv;
    }
    const T* __restrict__ g2 = g + c1;
    const T* __restrict__ b2 = b + c1;
    const T* __restrict__ go2 = gor + c1;
    T* __restrict__ w2 = w + c1;
    T* __restrict__ pg2 = pg + c1;
    T* __restrict__ pb2 = pb + c1;
#pragma omp simd
    for (int64_t j = 0; j < c2; ++j) {
      const T th = Math<T>::tanh(a_scale * as[j]);
      const T einv = Math<T>::exp(-clamp * th);
      const T u = (w2[j] - b2[j]) / g2[j];
      const T out = (u - a_scale * at[j]) * einv;
      const T gu = go2[j] * einv;
      const T gv = gu / g2[j];
      w2[j] = gv;
      gas[j] = -(go2[j] * out + gln) * dsda * (T(1) - th * th);
      gat[j] = -gu * a_scale;
      pg2[j] += gv * u;
      pb2[j] += gv;
    }
    for (int64_t i = 0; i < C; ++i) gyr[i] = w[A.perm[i]];
    if ((n - begin + 1) % kFibreFlush == 0) flush_fibre_partials(S, C);
  }
}

// Fibre blocks [blk_begin, blk_end): one partial row of grad_g / grad_b per block (negated
// in reverse, where grad_g = -sum gv*u and grad_b = -sum gv).
template <typename T>
void backward_fibres(const CouplingArgs<T>& A, int64_t blk_begin, int64_t blk_end, const FibreScratch<T>& S) {
  const int64_t C = A.C, R = A.rows_per_block, N = A.B;
  const double sign = A.reverse ? -1.0 : 1.0;
  for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
    for (int64_t c = 0; c < C; ++c) {
      S.part_g[c] = S.part_b[c] = T(0);
      S.acc_g[c] = S.acc_b[c] = 0.0;
    }
    const int64_t begin = blk * R, end = N < begin + R ? N : begin + R;
    if (A.reverse) {
      backward_fibres_rev(A, begin, end, S);
    } else {
      backward_fibres_fwd(A, begin, end, S);
    }
    flush_fibre_partials(S, C);
    for (int64_t c = 0; c < C; ++c) {
      A.row_gg[blk * C + c] = sign * S.acc_g[c];
      A.row_gb[blk * C + c] = sign * S.acc_b[c];
    }
  }
}

template void forward_fibres<float>(const CouplingArgs<float>&, int64_t, int64_t, float*);
template void forward_fibres<double>(const CouplingArgs<double>&, int64_t, int64_t, double*);
template void inverse_fibres<float>(const CouplingArgs<float>&, int64_t, int64_t, float*);
template void inverse_fibres<double>(const CouplingArgs<double>&, int64_t, int64_t, double*);
template void backward_fibres<float>(const CouplingArgs<float>&, int64_t, int64_t, const FibreScratch<float>&);
template void backward_fibres<double>(const CouplingArgs<double>&, int64_t, int64_t, const FibreScratch<double>&);
