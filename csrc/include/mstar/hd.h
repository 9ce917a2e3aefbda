// MSTAR_HD marks small inline functions shared by host (CPU kernels) and device (CUDA kernels) code.
// Same definition as in philox.h (an identical macro redefinition is allowed), guarded so either
// header can come first. Torch-free.
#pragma once
#ifndef MSTAR_HD
#if defined(__CUDACC__) || defined(__HIPCC__)
#define MSTAR_HD __host__ __device__ __forceinline__
#else
#define MSTAR_HD inline
#endif
#endif
