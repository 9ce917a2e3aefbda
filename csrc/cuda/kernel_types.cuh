// Element-type helpers shared by the torch-free CUDA kernels: fp32/fp64 accumulation types, loads that
// widen bf16 / fp16 to fp32, stores that narrow back, and a warp-wide combine. Included by the .cu files
// of csrc/cuda only (it is not compiled on its own).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace mstar::cuda {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_acc(typename AccType<T>::type x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half(x); }

// Combine `v` across the 32 lanes of a warp with `op`; every lane gets the result.
template <typename A, typename Op>
__device__ __forceinline__ A warp_all_reduce(A v, Op op) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

}  // namespace mstar::cuda
