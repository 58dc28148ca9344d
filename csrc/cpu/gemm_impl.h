// Included by loops_impl.h inside an ISA namespace (after the micro-kernel): a GEMM whose every
// output row is computed the same way whatever the rows around it, the thread running it or the
// thread count, built on the recurrence's micro-kernel (mk_rows_tile) and panel layout (pack_t).
// The layers' input projections, their input gradients and every weight gradient of the CPU
// backend go through it (csrc/cpu/linear.cpp), so that a row's result is bitwise the same alone or
// in a batch and with 1 or 2 threads: MKL's GEMMs are neither on every CPU (its AMD Zen 3 path
// splits differently for M = 1 and M = 32, and for 1 and 2 threads).

// out[i, :N] = A_i @ B (+ bias, or += when accumulate) for the rows i in [i0, i1), where
//   A_i[k] = a_trans ? a[k * lda + i] : a[i * lda + k]   (k < K)
// and B (K x N) is packed by pack_t(1, ...). Each row is reduced over k in fixed chunks of kKc,
// in order: the first chunk stores (plus the bias), the later ones add.
template <typename T>
void rows_mm_t(bool a_trans, const T* a, int64_t lda, int64_t i0, int64_t i1, int64_t K,
               const T* packed, int64_t N, const T* bias, bool accumulate, T* out, int64_t ldo) {
  using Bk = Blocking<T, 1>;
  constexpr int MR = Bk::MR, NB = Bk::NB, UW = Bk::UW, W = Bk::W;
  constexpr int64_t kKc = 256;
  const int64_t np = num_panels(N, UW);
  alignas(64) T tile[MR * NB * W];
  const T* arow[MR];
  // k chunks outside, rows inside: a chunk of every panel stays in cache for all the rows
  for (int64_t k0 = 0; k0 < std::max<int64_t>(K, 1); k0 += kKc) {
    const int64_t kc = std::min(kKc, K - k0);
    const bool add = accumulate || k0 > 0;
    for (int64_t r0 = i0; r0 < i1; r0 += MR) {
      const int m = int(std::min<int64_t>(MR, i1 - r0));
      if (!a_trans)
        for (int r = 0; r < m; ++r) arow[r] = a + (r0 + r) * lda + k0;
      // a transposed A is read in place: the MR values of one k are adjacent
      const ColsA<T> acol{a + k0 * lda + r0, lda};
      for (int64_t p = 0; p < np; ++p) {
        const T* panel = packed + (p * K + k0) * NB * W;
        if (a_trans)
          mk_rows_tile<T, NB, Bk::U, MR>(m, acol, kc, panel, tile);
        else
          mk_rows_tile<T, NB, Bk::U, MR>(m, arow, kc, panel, tile);
        const int64_t q0 = p * UW;
        const int nq = int(std::min<int64_t>(UW, N - q0));
        for (int r = 0; r < m; ++r) {
          T* o = out + (r0 + r) * ldo + q0;
          const T* v = tile + r * NB * W;
          if (add) {
            FUSEDRNN_SIMD
            for (int j = 0; j < nq; ++j) o[j] += v[j];
          } else if (bias) {
            FUSEDRNN_SIMD
            for (int j = 0; j < nq; ++j) o[j] = v[j] + bias[q0 + j];
          } else {
            std::memcpy(o, v, sizeof(T) * nq);
          }
        }
      }
    }
  }
}
