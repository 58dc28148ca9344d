// Per-step GEMMs of the CPU time loops. The steps are small (B x H_out times H_out x G*H), so the
// dispatcher and argument checks of at::addmm are a visible share of a step; when the BLAS that
// torch links exports the Fortran sgemm_/dgemm_ (MKL on x86 wheels) they are called directly,
// else this falls back to at::mm_out. The symbols are weak, so the extension still loads
// against a torch without them.
//
// A time loop multiplies the same recurrent weight every step. Plain sgemm copies that weight into
// its blocked layout on every call (7 % of the LSTM forward at B x H = 32 x 64, more at H = 256,
// per perf); MKL's packed API (cblas_sgemm_pack / cblas_sgemm_compute, float32 only in the MKL
// torch links) packs it once per op call instead (StepGemm, used by the forward loop; backward's
// dg @ W_hh gets MKL's no-copy kernel, faster unpacked). docs/cpu_backend.md has the numbers.
#include <cstdlib>
#include <cstring>

#include "recurrence.h"

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
// the C entry point (mkl_service.h maps mkl_set_num_threads_local to it; the lowercase symbol is
// the Fortran one, which takes a pointer)
int MKL_Set_Num_Threads_Local(int n) __attribute__((weak));
// MKL's packed GEMM, LP64 (MKL_INT = int; the _64 variants are ILP64); CBLAS enums are ints
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
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

// CBLAS enum values (mkl_cblas.h)
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

bool packed_api_available() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr &&
         cblas_sgemm_compute != nullptr;
}

bool fits_int(int64_t v) { return v <= INT32_MAX; }

}  // namespace

GemmPath gemm_path() {
  // read per op call (cheap next to a time loop), so tests can switch paths in one process
  const char* v = std::getenv("FUSEDRNN_CPU_GEMM");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return GemmPath::kAuto;
  if (std::strcmp(v, "plain") == 0) return GemmPath::kPlain;
  if (std::strcmp(v, "packed") == 0) {
    TORCH_CHECK(packed_api_available(), "fusedrnn: FUSEDRNN_CPU_GEMM=packed needs MKL's packed "
                "GEMM (cblas_sgemm_pack/cblas_sgemm_compute), which the BLAS torch links does "
                "not export; use auto or plain");
    return GemmPath::kPacked;
  }
  TORCH_CHECK(false, "fusedrnn: FUSEDRNN_CPU_GEMM must be one of auto, plain, packed, got '", v,
              "'");
}

template <typename T>
StepGemm<T>::StepGemm(bool tb, int64_t max_m, int64_t N, int64_t K, const T* B, int64_t ldb)
    : tb_(tb), N_(N), K_(K), ldb_(ldb), B_(B) {
  if constexpr (std::is_same_v<T, float>) {
    const GemmPath path = gemm_path();
    if (path == GemmPath::kPlain || !packed_api_available()) return;
    if (max_m == 0 || N == 0 || K == 0) return;
    if (!fits_int(max_m) || !fits_int(N) || !fits_int(K) || !fits_int(ldb)) return;
    const int m = static_cast<int>(max_m), n = static_cast<int>(N), k = static_cast<int>(K);
    const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, m, n, k);
    // the CPU allocator aligns to 64 bytes, which the packed layout wants
    packed_ = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte));
    cblas_sgemm_pack(kRowMajor, kBMatrix, tb ? kTrans : kNoTrans, m, n, k, 1.0f, B,
                     static_cast<int>(ldb), reinterpret_cast<float*>(packed_.data_ptr()));
  }
}

template <typename T>
void StepGemm<T>::run(int64_t M, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const {
  if (M == 0 || N_ == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (packed_.defined() && fits_int(M) && fits_int(lda) && fits_int(ldc)) {
      // M may be below the packed max_m (sorted lengths shrink the batch): a packed B does not
      // depend on M; ldb is ignored for a packed operand
      cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, static_cast<int>(M),
                          static_cast<int>(N_), static_cast<int>(K_), A, static_cast<int>(lda),
                          reinterpret_cast<const float*>(packed_.data_ptr()),
                          static_cast<int>(ldb_), beta, C, static_cast<int>(ldc));
      return;
    }
  }
  gemm_rows<T>(false, tb_, M, N_, K_, A, lda, B_, ldb_, beta, C, ldc);
}

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

SmallGemmGuard::SmallGemmGuard(int64_t macs_per_step) {
  // Below ~4M multiply-adds a step's GEMM is faster on one thread than the wake-up of a second
  // (and on a busy machine the wake-up can stall a whole step), so MKL runs these sequentially.
  constexpr int64_t kThreadedMacs = int64_t(1) << 22;
  if (macs_per_step < kThreadedMacs && MKL_Set_Num_Threads_Local != nullptr) {
    prev_ = MKL_Set_Num_Threads_Local(1);
    active_ = true;
  }
}

SmallGemmGuard::~SmallGemmGuard() {
  if (active_) MKL_Set_Num_Threads_Local(prev_);
}

template void gemm_rows<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                               const float*, int64_t, float, float*, int64_t);
template void gemm_rows<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                const double*, int64_t, double, double*, int64_t);
template class StepGemm<float>;
template class StepGemm<double>;

}  // namespace cpu
}  // namespace fusedrnn
