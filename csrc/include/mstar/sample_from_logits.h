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

// Temperatures below this are greedy (argmax, logprob under T = 1) on every backend (the Python layer,
// the Triton kernel and the torch reference use the same value: GREEDY_TEMPERATURE in
// mstar_fast/ops/reference.py). Why 1e-5: at T < 1e-5 a token trailing the max by 0.004 (about one bf16
// step of a logit near 1) has weight below exp(-400), so sampling is greedy in all but name; and 1 / T for a
// positive subnormal T overflows to inf, making (l - max) / T = 0 * inf = NaN for the max itself.
constexpr float kGreedyTemperature = 1e-5f;

struct SampleRowParams {
  float temperature;  // < kGreedyTemperature = greedy
  int64_t top_k;      // 0 = off
  float top_p;        // 1 = off
  float min_p;        // 0 = off
  uint64_t seed;
  uint64_t offset;
};

}  // namespace mstar
