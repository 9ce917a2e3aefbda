// Torch-free launcher of the CUDA group_topk kernel (csrc/cuda/group_topk_kernel.cu), called by the
// torch-facing csrc/group_topk_cuda.cpp. Raw device pointers and a stream; group offsets already checked
// there. Contract: mstar/group_topk.h.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "mstar/kernel_dtype.h"

namespace mstar::cuda {

// scores: [L] of `dtype`; offsets: [G + 1] int64; valid: [L] bool or nullptr (all valid); out: [L] bool.
cudaError_t launch_group_topk(const void* scores, KernelDType dtype, const int64_t* offsets, int64_t G, int64_t L,
                              const bool* valid, int64_t k, bool* out, cudaStream_t stream);

}  // namespace mstar::cuda
