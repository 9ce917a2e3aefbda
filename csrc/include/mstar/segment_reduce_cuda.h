// Torch-free launcher of the CUDA segment_reduce kernel (csrc/cuda/segment_reduce_kernel.cu), called by
// the torch-facing csrc/segment_reduce_cuda.cpp. Raw device pointers and a stream; offsets already
// checked there (offsets[0] == 0, non-decreasing, offsets[R] == length). Contract: mstar/segment_reduce.h.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "mstar/kernel_dtype.h"
#include "mstar/segment_reduce.h"

namespace mstar::cuda {

// values: [L] of `dtype`; offsets: [R + 1] int64; out: [R] of `dtype`.
cudaError_t launch_segment_reduce(const void* values, KernelDType dtype, const int64_t* offsets, int64_t R,
                                  Reduce reduce, void* out, cudaStream_t stream);

}  // namespace mstar::cuda
