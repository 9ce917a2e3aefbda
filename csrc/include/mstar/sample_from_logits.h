// Shared contract of the sample_from_logits kernels (CPU, CUDA, Triton mirror it in Python):
// per row, e_i = exp((l_i - max l) / T), then keep {e >= t_k} (top-k, ties kept), then top-p (keep i iff
// the mass strictly more probable than i is < top_p of the top-k mass), then min-p (e_i >= min_p), and
// draw from what is kept. Draw d of a row uses philox_uniform(seed, offset, d) (see philox.h).
// Torch-free: plain structs and status codes.
#pragma once
#include <cstdint>

namespace mstar {

// Written to the token output when a row cannot be sampled; the Python layer turns it into ValueError.
constexpr int64_t kStatusNonFinite = -1;  // the row holds NaN or +inf
constexpr int64_t kStatusAllMasked = -2;  // every logit is -inf

struct SampleRowParams {
  float temperature;  // 0 = greedy
  int64_t top_k;      // 0 = off
  float top_p;        // 1 = off
  float min_p;        // 0 = off
  uint64_t seed;
  uint64_t offset;
};

}  // namespace mstar
