// GRU pointwise kernels: cells.h's gru_fwd / gru_bwd behind the shared __global__ wrappers.
#include "fusedrnn/cells.h"
#include "kernels.cuh"

namespace fusedrnn {
namespace cuda {

FUSEDRNN_DEFINE_CELL_LAUNCHERS(gru, GRU)

}  // namespace cuda
}  // namespace fusedrnn
