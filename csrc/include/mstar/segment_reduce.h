// Shared contract of the segment_reduce kernels (CPU, CUDA; Triton and the torch reference mirror it):
// out[r] = reduce(values[offsets[r] : offsets[r+1]]) with reduce in {min, max, mean, sum, prod, last},
// accumulated in fp32 (fp64 for fp64 values). An empty segment gives NaN; min and max propagate NaN
// (a segment holding NaN gives NaN), like torch.min / torch.max. Torch-free; host and device.
#pragma once
#include <math.h>

#include "mstar/hd.h"

namespace mstar {

enum class Reduce : int { kMin = 0, kMax = 1, kMean = 2, kSum = 3, kProd = 4, kLast = 5 };

template <typename acc_t>
MSTAR_HD acc_t reduce_identity(Reduce r) {
  switch (r) {
    case Reduce::kMin: return static_cast<acc_t>(INFINITY);
    case Reduce::kMax: return static_cast<acc_t>(-INFINITY);
    case Reduce::kProd: return static_cast<acc_t>(1);
    default: return static_cast<acc_t>(0);
  }
}

// Combine two partial results (associative and commutative, so any order or tree is valid).
// For kLast the callers do not combine: they read the segment's last element.
template <typename acc_t>
MSTAR_HD acc_t reduce_combine(Reduce r, acc_t a, acc_t b) {
  switch (r) {
    case Reduce::kMin: return (a != a) ? a : ((b != b) ? b : (b < a ? b : a));
    case Reduce::kMax: return (a != a) ? a : ((b != b) ? b : (b > a ? b : a));
    case Reduce::kProd: return a * b;
    default: return a + b;  // sum, mean
  }
}

// Final value from the combined accumulator of a segment of n >= 1 elements.
template <typename acc_t>
MSTAR_HD acc_t reduce_finish(Reduce r, acc_t acc, long long n) {
  return r == Reduce::kMean ? acc / static_cast<acc_t>(n) : acc;
}

}  // namespace mstar
