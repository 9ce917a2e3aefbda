// CUDA segment_reduce: one warp per segment. Lanes stride over the segment combining into a per-lane
// fp32 (fp64 for fp64 input) accumulator, warp shuffles combine the lanes, lane 0 finishes (mean divides
// by the length) and writes. Empty segments give NaN; "last" reads one element. Semantics:
// mstar/segment_reduce.h. Torch-free: raw pointers and a stream.
#include <math.h>

#include "kernel_types.cuh"
#include "mstar/segment_reduce.h"
#include "mstar/segment_reduce_cuda.h"

namespace mstar::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    _segment_reduce_kernel(const T* __restrict__ values, const int64_t* __restrict__ offsets, int64_t R,
                           Reduce reduce, T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= R) return;
  const int64_t begin = offsets[r], end = offsets[r + 1];
  if (end <= begin) {
    if (lane == 0) out[r] = from_acc<T>(static_cast<acc_t>(NAN));
    return;
  }
  if (reduce == Reduce::kLast) {
    if (lane == 0) out[r] = values[end - 1];
    return;
  }
  acc_t acc = reduce_identity<acc_t>(reduce);
  for (int64_t i = begin + lane; i < end; i += 32) acc = reduce_combine<acc_t>(reduce, acc, to_acc(values[i]));
  acc = warp_all_reduce(acc, [reduce](acc_t a, acc_t b) { return reduce_combine<acc_t>(reduce, a, b); });
  if (lane == 0) out[r] = from_acc<T>(reduce_finish<acc_t>(reduce, acc, static_cast<long long>(end - begin)));
}

template <typename T>
void launch_typed(const void* values, const int64_t* offsets, int64_t R, Reduce reduce, void* out,
                  cudaStream_t stream) {
  const dim3 block(kWarpsPerBlock * 32);
  const dim3 grid(static_cast<unsigned>((R + kWarpsPerBlock - 1) / kWarpsPerBlock));
  _segment_reduce_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(values), offsets, R, reduce,
                                                        static_cast<T*>(out));
}

}  // namespace

cudaError_t launch_segment_reduce(const void* values, KernelDType dtype, const int64_t* offsets, int64_t R,
                                  Reduce reduce, void* out, cudaStream_t stream) {
  if (R == 0) return cudaSuccess;
  switch (dtype) {
    case KernelDType::kFloat32: launch_typed<float>(values, offsets, R, reduce, out, stream); break;
    case KernelDType::kFloat64: launch_typed<double>(values, offsets, R, reduce, out, stream); break;
    case KernelDType::kBFloat16: launch_typed<__nv_bfloat16>(values, offsets, R, reduce, out, stream); break;
    case KernelDType::kFloat16: launch_typed<__half>(values, offsets, R, reduce, out, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace mstar::cuda
