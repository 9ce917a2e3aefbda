// CUDA prm_step_scores: one warp per step-tag row. The warp gathers the row h = hidden[positions[s]]
// (coalesced, lane-strided), takes its dot products with the 1 or 2 head rows in fp32, reduces them with
// warp shuffles, and lane 0 writes P(good step) (mstar/prm_step_scores.h). Only S rows of hidden and the
// head rows are read: no other vocabulary row is ever touched. Torch-free: raw pointers and a stream.
#include <math.h>

#include "kernel_types.cuh"
#include "mstar/prm_step_scores.h"
#include "mstar/prm_step_scores_cuda.h"

namespace mstar::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T, int C>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    _prm_step_scores_kernel(const T* __restrict__ hidden, int64_t row_stride, int64_t N, int64_t H,
                            const int64_t* __restrict__ positions, int64_t S, const T* __restrict__ weight,
                            const T* __restrict__ bias, float* __restrict__ out) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (s >= S) return;  // whole warps exit together
  const int64_t p = positions[s];
  if (p < 0 || p >= N) {  // the launcher checks; never read out of bounds regardless
    if (lane == 0) out[s] = NAN;
    return;
  }
  const T* row = hidden + p * row_stride;
  float a0 = 0.f, a1 = 0.f;
  for (int64_t h = lane; h < H; h += 32) {
    const float x = to_acc(row[h]);
    a0 = fmaf(x, to_acc(weight[h]), a0);
    if (C == 2) a1 = fmaf(x, to_acc(weight[H + h]), a1);
  }
  const auto add = [](float a, float b) { return a + b; };
  a0 = warp_all_reduce(a0, add);
  if (C == 2) a1 = warp_all_reduce(a1, add);
  if (lane == 0) {
    if (bias != nullptr) {
      a0 += to_acc(bias[0]);
      if (C == 2) a1 += to_acc(bias[1]);
    }
    out[s] = step_prob(a0, a1, C);
  }
}

template <typename T>
void launch_typed(const void* hidden, int64_t row_stride, int64_t N, int64_t H, const int64_t* positions, int64_t S,
                  const void* weight, int num_heads, const void* bias, float* out, cudaStream_t stream) {
  const dim3 block(kWarpsPerBlock * 32);
  const dim3 grid(static_cast<unsigned>((S + kWarpsPerBlock - 1) / kWarpsPerBlock));
  const T* h = static_cast<const T*>(hidden);
  const T* w = static_cast<const T*>(weight);
  const T* b = static_cast<const T*>(bias);
  if (num_heads == 2)
    _prm_step_scores_kernel<T, 2><<<grid, block, 0, stream>>>(h, row_stride, N, H, positions, S, w, b, out);
  else
    _prm_step_scores_kernel<T, 1><<<grid, block, 0, stream>>>(h, row_stride, N, H, positions, S, w, b, out);
}

}  // namespace

cudaError_t launch_prm_step_scores(const void* hidden, int64_t row_stride, int64_t N, int64_t H, KernelDType dtype,
                                   const int64_t* positions, int64_t S, const void* weight, int num_heads,
                                   const void* bias, float* out, cudaStream_t stream) {
  if (S == 0) return cudaSuccess;
  if (num_heads != 1 && num_heads != 2) return cudaErrorInvalidValue;
  switch (dtype) {
    case KernelDType::kFloat32:
      launch_typed<float>(hidden, row_stride, N, H, positions, S, weight, num_heads, bias, out, stream);
      break;
    case KernelDType::kBFloat16:
      launch_typed<__nv_bfloat16>(hidden, row_stride, N, H, positions, S, weight, num_heads, bias, out, stream);
      break;
    case KernelDType::kFloat16:
      launch_typed<__half>(hidden, row_stride, N, H, positions, S, weight, num_heads, bias, out, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace mstar::cuda
