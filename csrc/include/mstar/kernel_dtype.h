// Element types the torch-free CUDA launchers accept; the torch-facing .cpp files map
// at::ScalarType onto it, and the .cu files map it onto float / double / __nv_bfloat16 / __half.
// Torch-free and CUDA-free.
#pragma once

namespace mstar {

enum class KernelDType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

}  // namespace mstar
