// Elman RNN (tanh and relu) pointwise kernels: cells.h's rnn_*_fwd / rnn_*_bwd behind the
// shared __global__ wrappers.
#include "fusedrnn/cells.h"
#include "kernels.cuh"

namespace fusedrnn {
namespace cuda {

FUSEDRNN_DEFINE_CELL_LAUNCHERS(rnn_tanh, RNN_TANH)
FUSEDRNN_DEFINE_CELL_LAUNCHERS(rnn_relu, RNN_RELU)

}  // namespace cuda
}  // namespace fusedrnn
