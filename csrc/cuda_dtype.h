// at::ScalarType -> mstar::KernelDType, for the torch-facing CUDA launchers (csrc/*_cuda.cpp) only.
#pragma once
#include <ATen/core/Tensor.h>

#include "mstar/kernel_dtype.h"

namespace mstar_fast {

inline mstar::KernelDType kernel_dtype(const char* op, at::ScalarType st) {
  switch (st) {
    case at::kFloat: return mstar::KernelDType::kFloat32;
    case at::kDouble: return mstar::KernelDType::kFloat64;
    case at::kBFloat16: return mstar::KernelDType::kBFloat16;
    case at::kHalf: return mstar::KernelDType::kFloat16;
    default: TORCH_CHECK_VALUE(false, op, ": unsupported dtype ", st);
  }
}

}  // namespace mstar_fast
