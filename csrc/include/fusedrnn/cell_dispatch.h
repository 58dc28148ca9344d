// Run-time cell -> compile-time cell, once for every loop (like flash-attention's
// static_switch.h): the CPU and CUDA code call with_cell() instead of writing their own switch,
// and name the cells only through FUSEDRNN_CELLS (cells.h). Nothing here names a cell, so adding
// one to cells.h (its equations, traits, CellOps and an X(NAME) in FUSEDRNN_CELLS) reaches every
// dispatch, instantiation and mode-name lookup. Host code only.
#pragma once

#include <cstddef>
#include <cstring>
#include <string>
#include <type_traits>

#include "fusedrnn/cells.h"

namespace fusedrnn {

template <Cell C>
using CellTag = std::integral_constant<Cell, C>;

// f(CellTag<C>{}) for the cell C == cell: inside f, `constexpr Cell C = decltype(tag)::value;`.
template <typename F>
decltype(auto) with_cell(Cell cell, F&& f) {
  switch (cell) {
#define FUSEDRNN_WITH_CELL_CASE(CELL) \
  case Cell::CELL:                    \
    return f(CellTag<Cell::CELL>{});
    FUSEDRNN_CELLS(FUSEDRNN_WITH_CELL_CASE)
#undef FUSEDRNN_WITH_CELL_CASE
  }
  return f(CellTag<Cell::RNN_TANH>{});  // not reached: every enumerator has its case
}

// The op's mode names (torch.nn's), in FUSEDRNN_CELLS order.
#define FUSEDRNN_CELL_NAME(CELL) #CELL,
inline constexpr const char* kCellNames[] = {FUSEDRNN_CELLS(FUSEDRNN_CELL_NAME)};
#undef FUSEDRNN_CELL_NAME
inline constexpr int kNumCells = int(sizeof(kCellNames) / sizeof(kCellNames[0]));

// The cell named `name` (not NUL-terminated, `len` chars); false when no cell has that name.
inline bool cell_from_name(const char* name, std::size_t len, Cell* out) {
#define FUSEDRNN_CELL_LOOKUP(CELL)                                               \
  if (len == sizeof(#CELL) - 1 && std::memcmp(name, #CELL, len) == 0) {         \
    *out = Cell::CELL;                                                           \
    return true;                                                                 \
  }
  FUSEDRNN_CELLS(FUSEDRNN_CELL_LOOKUP)
#undef FUSEDRNN_CELL_LOOKUP
  return false;
}

// "RNN_TANH, RNN_RELU, ..." for error messages.
inline std::string cell_name_list() {
  std::string s;
  for (int i = 0; i < kNumCells; ++i) s += (i ? ", " : "") + std::string(kCellNames[i]);
  return s;
}

}  // namespace fusedrnn
