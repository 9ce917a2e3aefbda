// Torch-free launcher of the CUDA prm_step_scores kernel (csrc/cuda/prm_step_scores_kernel.cu), called
// by the torch-facing csrc/prm_step_scores_cuda.cpp. Raw device pointers and a stream; inputs are
// already checked there. Contract: mstar/prm_step_scores.h.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "mstar/kernel_dtype.h"

namespace mstar::cuda {

// hidden: rows of `row_stride` elements (last dim contiguous), N rows, H columns, dtype `dtype`.
// positions: [S] int64 row indices (a row outside [0, N) yields NaN). weight: [num_heads, H] contiguous,
// same dtype; bias: [num_heads] same dtype, or nullptr. out: [S] fp32.
cudaError_t launch_prm_step_scores(const void* hidden, int64_t row_stride, int64_t N, int64_t H, KernelDType dtype,
                                   const int64_t* positions, int64_t S, const void* weight, int num_heads,
                                   const void* bias, float* out, cudaStream_t stream);

}  // namespace mstar::cuda
