// Row kernels of the CPU affine coupling (no include guard on purpose).
//
// affine_coupling.cpp includes this file several times, each time inside its own namespace
// and instruction-set region (baseline, AVX2+FMA, AVX-512), after every library header, so
// that each copy is compiled for its ISA.  Keep it free of #includes and library templates.
//
// A "row" is one (sample n, output channel i) pair: P = H*W contiguous values.  Forward
// gathers input channel c = perm[i]; the inverse and the reverse-mode backward scatter into
// channel c.  Sums run in T over blocks of kRowBlock elements (vectorised) and then in double.

template <typename T>
void forward_rows(const CouplingArgs<T>& A, int64_t begin, int64_t end) {
  const int64_t C = A.C, P = A.P, c2 = C / 2, c1 = C - c2;
  const T clamp = A.clamp, a_scale = A.a_scale;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / C, i = row % C;
    const int64_t c = A.perm[i];
    const T gc = A.g[c], bc = A.b[c];
    const T* __restrict__ xr = A.x + (n * C + c) * P;
    T* __restrict__ yr = A.y + row * P;
    if (c < c1) {
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) yr[p] = xr[p] * gc + bc;
      A.row_s[row] = 0.0;
      continue;
    }
    const T* __restrict__ as = A.a + (n * 2 * c2 + (c - c1)) * P;
    const T* __restrict__ at = as + c2 * P;
    double acc = 0.0;
    for (int64_t p0 = 0; p0 < P; p0 += kRowBlock) {
      const int64_t p1 = P < p0 + kRowBlock ? P : p0 + kRowBlock;
      T part = 0;
#pragma omp simd reduction(+ : part)
      for (int64_t p = p0; p < p1; ++p) {
        const T s = clamp * Math<T>::tanh(a_scale * as[p]);
        const T u = xr[p] * Math<T>::exp(s) + a_scale * at[p];
        yr[p] = u * gc + bc;
        part += s;
      }
      acc += static_cast<double>(part);
    }
    A.row_s[row] = acc;
  }
}

template <typename T>
void inverse_rows(const CouplingArgs<T>& A, int64_t begin, int64_t end) {
  const int64_t C = A.C, P = A.P, c2 = C / 2, c1 = C - c2;
  const T clamp = A.clamp, a_scale = A.a_scale;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / C, i = row % C;
    const int64_t c = A.perm[i];
    const T gc = A.g[c], bc = A.b[c];
    const T* __restrict__ yr = A.x + row * P;  // the op's input is the step output here
    T* __restrict__ xr = A.y + (n * C + c) * P;
    if (c < c1) {
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) xr[p] = (yr[p] - bc) / gc;
      A.row_s[row] = 0.0;
      continue;
    }
    const T* __restrict__ as = A.a + (n * 2 * c2 + (c - c1)) * P;
    const T* __restrict__ at = as + c2 * P;
    double acc = 0.0;
    for (int64_t p0 = 0; p0 < P; p0 += kRowBlock) {
      const int64_t p1 = P < p0 + kRowBlock ? P : p0 + kRowBlock;
      T part = 0;
#pragma omp simd reduction(+ : part)
      for (int64_t p = p0; p < p1; ++p) {
        const T s = clamp * Math<T>::tanh(a_scale * as[p]);
        const T u = (yr[p] - bc) / gc;
        xr[p] = (u - a_scale * at[p]) * Math<T>::exp(-s);
        part += s;
      }
      acc += static_cast<double>(part);
    }
    A.row_s[row] = acc;
  }
}

// Backward of either direction.  A.x is the op's input (step input when !reverse, step
// output when reverse); A.go the gradient of the op's first output; A.gl the gradient of
// the log-det (may be null).  Writes A.gx, A.ga and the per-(n, c) partials of grad_g and
// grad_b (row_gg, row_gb, indexed n*C + c).
template <typename T>
void backward_rows(const CouplingArgs<T>& A, int64_t begin, int64_t end) {
  const int64_t C = A.C, P = A.P, c2 = C / 2, c1 = C - c2;
  const T clamp = A.clamp, a_scale = A.a_scale, dsda = A.clamp * A.a_scale;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / C, i = row % C;
    const int64_t c = A.perm[i];
    const T gc = A.g[c], bc = A.b[c];
    const T gln = A.gl ? A.gl[n] : T(0);
    double acc_g = 0.0, acc_b = 0.0;
    if (!A.reverse) {
      // y[n,i] = u[n,c]*g[c] + b[c]; u = x (c < c1) or x*exp(s) + t.
      const T* __restrict__ gy = A.go + row * P;
      const T* __restrict__ xr = A.x + (n * C + c) * P;
      T* __restrict__ gxr = A.gx + (n * C + c) * P;
      if (c < c1) {
        for (int64_t p0 = 0; p0 < P; p0 += kRowBlock) {
          const int64_t p1 = P < p0 + kRowBlock ? P : p0 + kRowBlock;
          T part_g = 0, part_b = 0;
#pragma omp simd reduction(+ : part_g, part_b)
          for (int64_t p = p0; p < p1; ++p) {
            gxr[p] = gy[p] * gc;
            part_g += gy[p] * xr[p];
            part_b += gy[p];
          }
          acc_g += static_cast<double>(part_g);
          acc_b += static_cast<double>(part_b);
        }
      } else {
        const T* __restrict__ as = A.a + (n * 2 * c2 + (c - c1)) * P;
        const T* __restrict__ at = as + c2 * P;
        T* __restrict__ gas = A.ga + (n * 2 * c2 + (c - c1)) * P;
        T* __restrict__ gat = gas + c2 * P;
        for (int64_t p0 = 0; p0 < P; p0 += kRowBlock) {
          const int64_t p1 = P < p0 + kRowBlock ? P : p0 + kRowBlock;
          T part_g = 0, part_b = 0;
#pragma omp simd reduction(+ : part_g, part_b)
          for (int64_t p = p0; p < p1; ++p) {
            const T th = Math<T>::tanh(a_scale * as[p]);
            const T e = Math<T>::exp(clamp * th);
            const T xe = xr[p] * e;
            const T u = xe + a_scale * at[p];
            const T gu = gy[p] * gc;
            gxr[p] = gu * e;
            gas[p] = (gu * xe + gln) * dsda * (T(1) - th * th);
            gat[p] = gu * a_scale;
            part_g += gy[p] * u;
            part_b += gy[p];
          }
          acc_g += static_cast<double>(part_g);
          acc_b += static_cast<double>(part_b);
        }
      }
      A.row_gg[n * C + c] = acc_g;
      A.row_gb[n * C + c] = acc_b;
    } else {
      // out[n,c] = u (c < c1) or (u - t)*exp(-s), with u = (y[n,i] - b[c]) / g[c] and
      // logdet = -(sum s) - P*sum log g.  grad_g = -sum gv*u, grad_b = -sum gv, gv = gu/g.
      const T* __restrict__ yr = A.x + row * P;
      const T* __restrict__ gor = A.go + (n * C + c) * P;
      T* __restrict__ gyr = A.gx + row * P;
      if (c < c1) {
        for (int64_t p0 = 0; p0 < P; p0 += kRowBlock) {
          const int64_t p1 = P < p0 + kRowBlock ? P : p0 + kRowBlock;
          T part_g = 0, part_b = 0;
#pragma omp simd reduction(+ : part_g, part_b)
          for (int64_t p = p0; p < p1; ++p) {
            const T u = (yr[p] - bc) / gc;
            const T gv = gor[p] / gc;
            gyr[p] = gv;
            part_g += gv * u;
            part_b += gv;
          }
          acc_g += static_cast<double>(part_g);
          acc_b += static_cast<double>(part_b);
        }
      } else {
        const T* __restrict__ as = A.a + (n * 2 * c2 + (c - c1)) * P;
        const T* __restrict__ at = as + c2 * P;
        T* __restrict__ gas = A.ga + (n * 2 * c2 + (c - c1)) * P;
        T* __restrict__ gat = gas + c2 * P;
        for (int64_t p0 = 0; p0 < P; p0 += kRowBlock) {
          const int64_t p1 = P < p0 + kRowBlock ? P : p0 + kRowBlock;
          T part_g = 0, part_b = 0;
#pragma omp simd reduction(+ : part_g, part_b)
          for (int64_t p = p0; p < p1; ++p) {
            const T th = Math<T>::tanh(a_scale * as[p]);
            const T einv = Math<T>::exp(-clamp * th);
            const T u = (yr[p] - bc) / gc;
            const T out = (u - a_scale * at[p]) * einv;
            const T gu = gor[p] * einv;
            const T gv = gu / gc;
            gyr[p] = gv;
            gas[p] = -(gor[p] * out + gln) * dsda * (T(1) - th * th);
            gat[p] = -gu * a_scale;
            part_g += gv * u;
            part_b += gv;
          }
          acc_g += static_cast<double>(part_g);
          acc_b += static_cast<double>(part_b);
        }
      }
      A.row_gg[n * C + c] = -acc_g;
      A.row_gb[n * C + c] = -acc_b;
    }
  }
}

template void forward_rows<float>(const CouplingArgs<float>&, int64_t, int64_t);
template void forward_rows<double>(const CouplingArgs<double>&, int64_t, int64_t);
template void inverse_rows<float>(const CouplingArgs<float>&, int64_t, int64_t);
template void inverse_rows<double>(const CouplingArgs<double>&, int64_t, int64_t);
template void backward_rows<float>(const CouplingArgs<float>&, int64_t, int64_t);
template void backward_rows<double>(const CouplingArgs<double>&, int64_t, int64_t);
