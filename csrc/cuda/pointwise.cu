// The pointwise kernels of every cell: cells.h's <cell>_fwd / <cell>_bwd behind the shared
// __global__ wrappers of kernels.cuh, instantiated for each cell of FUSEDRNN_CELLS.
#include "fusedrnn/cells.h"
#include "kernels.cuh"

namespace fusedrnn {
namespace cuda {

FUSEDRNN_CELLS(FUSEDRNN_CELL_LAUNCHER_INSTANCES)

}  // namespace cuda
}  // namespace fusedrnn
