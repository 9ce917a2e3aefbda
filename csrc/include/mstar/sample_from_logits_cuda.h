// Host launchers of the CUDA sample_from_logits kernel (csrc/cuda/sample_from_logits_kernel.cu).
// Torch-free: raw device pointers and a cudaStream_t, so the torch-facing launcher
// (csrc/sample_from_logits_cuda.cpp) and nvcc-only code can both include it.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "mstar/sample_from_logits.h"

namespace mstar::cuda {

// Logits element type, the `dtype` argument of launch_sample_from_logits.
enum SampleDtype : int { kSampleF32 = 0, kSampleBF16 = 1, kSampleF16 = 2 };

// Largest vocabulary the kernel accepts (row-local indices are 32-bit).
constexpr int64_t kSampleMaxVocab = int64_t{1} << 30;

// out[b] = SampleRowParams{temperature[b], top_k[b], top_p[b], min_p[b], seed[b], offset} for b < B, on the
// device (all pointers are device pointers to contiguous [B] arrays). Asynchronous on `stream`.
cudaError_t launch_pack_sample_params(const float* temperature, const int64_t* top_k, const float* top_p,
                                      const float* min_p, const int64_t* seed, uint64_t offset, int64_t B,
                                      SampleRowParams* out, cudaStream_t stream);

// Draws one token per row of the contiguous [B, V] `logits` (dtype: SampleDtype) with the per-row parameters
// `params_device` ([B], device memory). Writes tokens[b] (a token, or kStatusNonFinite / kStatusAllMasked) and,
// when `logprobs` is not null, logprobs[b] = log_softmax(logits[b] / T)[token] (NaN for a bad row).
// Asynchronous on `stream`; returns the launch error (cudaErrorInvalidValue for a bad dtype or shape).
cudaError_t launch_sample_from_logits(const void* logits, int dtype, int64_t B, int64_t V,
                                      const SampleRowParams* params_device, int64_t* tokens, float* logprobs,
                                      cudaStream_t stream);

}  // namespace mstar::cuda
