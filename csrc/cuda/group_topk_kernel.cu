// CUDA group_topk: one thread per row. A thread finds its group by binary search over the offsets, then
// counts the valid rows of the group that rank before it (mstar/group_topk.h), stopping at k; the row is
// kept when that count stays below k. O(n^2 / 2) comparisons for a group of n rows, which is cheap for
// the group sizes of self-evolving training (K samples per prompt). Torch-free: raw pointers and a stream.
#include "kernel_types.cuh"
#include "mstar/group_topk.h"
#include "mstar/group_topk_cuda.h"

namespace mstar::cuda {
namespace {

template <typename T>
__global__ void _group_topk_kernel(const T* __restrict__ scores, const int64_t* __restrict__ offsets, int64_t G,
                                   int64_t L, const bool* __restrict__ valid, int64_t k, bool* __restrict__ out) {
  using key_t = typename AccType<T>::type;  // bf16 / fp16 widen to fp32 exactly
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= L) return;
  if ((valid != nullptr && !valid[i]) || k <= 0) {
    out[i] = false;
    return;
  }
  // The group of row i: the largest g with offsets[g] <= i (then offsets[g + 1] > i, as offsets[G] = L).
  int64_t lo = 0, hi = G - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= i) lo = mid; else hi = mid - 1;
  }
  const int64_t begin = offsets[lo], end = offsets[lo + 1];
  const key_t si = to_acc(scores[i]);
  int64_t before = 0;
  for (int64_t j = begin; j < end && before < k; ++j) {
    if (j == i || (valid != nullptr && !valid[j])) continue;
    if (ranks_before<key_t>(to_acc(scores[j]), j, si, i)) ++before;
  }
  out[i] = before < k;
}

template <typename T>
void launch_typed(const void* scores, const int64_t* offsets, int64_t G, int64_t L, const bool* valid, int64_t k,
                  bool* out, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const dim3 grid(static_cast<unsigned>((L + kThreads - 1) / kThreads));
  _group_topk_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(scores), offsets, G, L, valid, k, out);
}

}  // namespace

cudaError_t launch_group_topk(const void* scores, KernelDType dtype, const int64_t* offsets, int64_t G, int64_t L,
                              const bool* valid, int64_t k, bool* out, cudaStream_t stream) {
  if (L == 0) return cudaSuccess;
  if (G <= 0) return cudaErrorInvalidValue;  // L > 0 rows need at least one group
  switch (dtype) {
    case KernelDType::kFloat32: launch_typed<float>(scores, offsets, G, L, valid, k, out, stream); break;
    case KernelDType::kFloat64: launch_typed<double>(scores, offsets, G, L, valid, k, out, stream); break;
    case KernelDType::kBFloat16: launch_typed<__nv_bfloat16>(scores, offsets, G, L, valid, k, out, stream); break;
    case KernelDType::kFloat16: launch_typed<__half>(scores, offsets, G, L, valid, k, out, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace mstar::cuda
