// LSTM pointwise kernels: cells.h's lstm_fwd / lstm_bwd behind the shared __global__ wrappers.
#include "fusedrnn/cells.h"
#include "kernels.cuh"

namespace fusedrnn {
namespace cuda {

FUSEDRNN_DEFINE_CELL_LAUNCHERS(lstm, LSTM)

}  // namespace cuda
}  // namespace fusedrnn
