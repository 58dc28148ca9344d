// Small GEMMs straight into the BLAS torch links (the streaming cell_step): at B = 1 the
// dispatcher and argument checks of at::addmm are a visible share of a step, so when that BLAS
// exports the Fortran sgemm_/dgemm_ (MKL on x86 wheels) they are called directly, else this falls
// back to at::mm. The symbols are weak, so the extension still loads against a torch without them.
// The time loops do not come here: their recurrent products are the micro-kernel of loops_impl.h.
#include "recurrence.h"

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace fusedrnn {
namespace cpu {

namespace {

// Row-major C = op(A) op(B) (+ C) is column-major C^T = op(B)^T op(A)^T: swap the operands.
template <typename T, typename F>
bool call_fortran(F* fn, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A,
                  int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (fn == nullptr || M > INT32_MAX || N > INT32_MAX || K > INT32_MAX) return false;
  const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const T alpha = T(1);
  fn(&ctb, &cta, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
  return true;
}

}  // namespace

template <typename T>
void gemm_rows(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  bool done;
  if constexpr (std::is_same_v<T, float>)
    done = call_fortran<float>(sgemm_, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
  else
    done = call_fortran<double>(dgemm_, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
  if (done) return;
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool t) {
    Tensor m = at::from_blob(const_cast<T*>(p), {t ? cols : rows, t ? rows : cols}, {ld, 1}, opts);
    return t ? m.t() : m;
  };
  Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  Tensor prod = at::mm(view(A, M, K, lda, ta), view(B, K, N, ldb, tb));
  if (beta == T(0))
    c.copy_(prod);
  else
    c.add_(prod);
}

template void gemm_rows<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                               const float*, int64_t, float, float*, int64_t);
template void gemm_rows<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                const double*, int64_t, double, double*, int64_t);

}  // namespace cpu
}  // namespace fusedrnn
