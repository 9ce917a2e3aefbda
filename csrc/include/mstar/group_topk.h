// Shared contract of the group_topk kernels (CPU, CUDA; Triton and the torch reference mirror it):
// within each group, rows are ranked by score, highest first, NaN after every number, ties (and NaN
// against NaN) broken by the lower row index; out[i] = valid[i] and fewer than k valid rows of i's
// group rank before i. The ranking is a strict total order, so every group has exactly
// min(k, #valid) rows marked. Torch-free; host and device.
#pragma once
#include <stdint.h>

#include "mstar/hd.h"

namespace mstar {

// True when row j (score sj) ranks strictly before row i (score si), j != i.
template <typename T>
MSTAR_HD bool ranks_before(T sj, int64_t j, T si, int64_t i) {
  const bool nan_j = sj != sj, nan_i = si != si;
  if (nan_j != nan_i) return nan_i;  // a number ranks before NaN
  if (!nan_j && sj != si) return sj > si;
  return j < i;
}

}  // namespace mstar
