// The pointwise pass of one time step over a range of batch rows: the cell math of cells.h
// applied to every hidden unit, forward and backward. Raw pointers only (no ATen), so that
// pointwise.cpp can compile the float versions for several instruction sets (the unit loops
// vectorize; the time loops in recurrence_fwd/bwd.cpp pick the version at run time).
#pragma once

#include <cstdint>

#include "fusedrnn/cells.h"

namespace fusedrnn {
namespace cpu {

// One forward step. Row b of the step reads xw_t[b] and hh[b] ([G*H] each) and updates the state
// h[b] ([H_out]), c[b] ([H], LSTM), writes y_t[b] ([H_out]) and cs_t[b] ([H], LSTM). With a
// projection the unprojected h goes to r[b] ([H]) instead of h/y (the caller projects it).
template <typename T>
struct FwdRows {
  const T* xw_t;         // [B, G*H]
  const T* hh;           // [B, G*H]  W_hh h_prev + b_hh
  T* h;                  // [B, H_out]
  T* c;                  // [B, H] or null
  T* cs_t;               // [B, H] or null
  T* y_t;                // [B, H_out]
  T* r;                  // [B, H] or null (projection)
  const T* zeros;        // [max(H, H_out)] of zeros
  const int64_t* len;    // [B] or null: rows with t >= len[b] are masked
  int64_t t, H, H_out;
};

// One backward step, rows in reverse processing order. dxw_t[b] holds W_hh h_prev + b_hh on entry
// (cells with saved activations recompute them) and the gate gradients on exit.
template <typename T>
struct BwdRows {
  const T* xw;           // [T, B, G*H]
  const T* y;            // [T, B, H_out]
  const T* dy;           // [T, B, H_out] or null
  const T* h0;           // [B, H_out]
  const T* c0;           // [B, H] or null
  const T* cs;           // [T, B, H] or null
  const T* dr;           // [B, H] or null: dL/d(o * tanh c) of the step (projection)
  const T* zeros;        // [max(H, H_out)]
  const int64_t* len;    // [B] or null (no lengths); masking only when `masked`
  T* dxw;                // [T, B, G*H]
  T* dgh;                // [B, G*H] or null (GRU: recurrent-side gate gradients of the step)
  T* dhn;                // [T, B, H] or null (GRU)
  T* dh;                 // [B, H_out] carried
  T* dc;                 // [B, H] or null (LSTM)
  T* r;                  // [T, B, H] or null (projection)
  int64_t t, T_len, B, H, H_out;
  bool reverse, masked;
};

template <Cell C, typename T>
void fwd_rows(const FwdRows<T>& a, int64_t b0, int64_t b1);
template <Cell C, typename T>
void bwd_rows(const BwdRows<T>& a, int64_t b0, int64_t b1);

}  // namespace cpu
}  // namespace fusedrnn
