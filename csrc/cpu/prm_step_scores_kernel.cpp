// CPU prm_step_scores, compiled once per CPU_CAPABILITY (DEFAULT/AVX2/AVX512): for each step-tag row,
// gather hidden[positions[s]], widen bf16/fp16 to fp32 a vector at a time, and accumulate its dot
// products with the fp32 head rows in two vector accumulators per head; then P(good step) from
// mstar/prm_step_scores.h. Memory traffic is S rows of H elements plus the head rows: nothing is read
// for any other vocabulary row.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <functional>

#include "mstar/prm_step_scores.h"

namespace mstar::cpu {
inline namespace CPU_CAPABILITY {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();

namespace {

// Two float vectors from 2 * kW elements of x (bf16 / fp16 widened).
template <typename T>
inline void load2(const T* x, Vec& lo, Vec& hi) {
  auto [a, b] = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(x));
  lo = a;
  hi = b;
}
template <>
inline void load2<float>(const float* x, Vec& lo, Vec& hi) {
  lo = Vec::loadu(x);
  hi = Vec::loadu(x + kW);
}

// dot(row, w0) and, when C == 2, dot(row, w1), in fp32.
template <typename T, int C>
inline void dots(const T* row, int64_t H, const float* w0, const float* w1, float& d0, float& d1) {
  Vec a0(0.f), b0(0.f), a1(0.f), b1(0.f);
  int64_t i = 0;
  for (; i + 2 * kW <= H; i += 2 * kW) {
    Vec lo, hi;
    load2<T>(row + i, lo, hi);
    a0 = at::vec::fmadd(lo, Vec::loadu(w0 + i), a0);
    b0 = at::vec::fmadd(hi, Vec::loadu(w0 + i + kW), b0);
    if constexpr (C == 2) {
      a1 = at::vec::fmadd(lo, Vec::loadu(w1 + i), a1);
      b1 = at::vec::fmadd(hi, Vec::loadu(w1 + i + kW), b1);
    }
  }
  d0 = at::vec::vec_reduce_all<float>(std::plus<Vec>(), a0 + b0);
  d1 = C == 2 ? at::vec::vec_reduce_all<float>(std::plus<Vec>(), a1 + b1) : 0.f;
  for (; i < H; ++i) {
    const float x = static_cast<float>(row[i]);
    d0 += x * w0[i];
    if constexpr (C == 2) d1 += x * w1[i];
  }
}

template <typename T, int C>
void rows_impl(const T* hidden, int64_t row_stride, int64_t H, const int64_t* positions, const float* weight,
               const float* bias, int64_t begin, int64_t end, float* out) {
  const float* w1 = C == 2 ? weight + H : nullptr;
  for (int64_t s = begin; s < end; ++s) {
    float l0, l1;
    dots<T, C>(hidden + positions[s] * row_stride, H, weight, w1, l0, l1);
    if (bias != nullptr) {
      l0 += bias[0];
      if constexpr (C == 2) l1 += bias[1];
    }
    out[s] = mstar::step_prob(l0, l1, C);
  }
}

}  // namespace

// Rows [begin, end) of positions; weight is fp32 [C, H] contiguous, bias fp32 [C] or nullptr. Positions
// are already range-checked by the launcher.
template <typename scalar_t>
void prm_step_scores_rows(const scalar_t* hidden, int64_t row_stride, int64_t H, const int64_t* positions,
                          const float* weight, int C, const float* bias, int64_t begin, int64_t end, float* out) {
  if (C == 2)
    rows_impl<scalar_t, 2>(hidden, row_stride, H, positions, weight, bias, begin, end, out);
  else
    rows_impl<scalar_t, 1>(hidden, row_stride, H, positions, weight, bias, begin, end, out);
}

template void prm_step_scores_rows<float>(const float*, int64_t, int64_t, const int64_t*, const float*, int,
                                          const float*, int64_t, int64_t, float*);
template void prm_step_scores_rows<c10::BFloat16>(const c10::BFloat16*, int64_t, int64_t, const int64_t*,
                                                  const float*, int, const float*, int64_t, int64_t, float*);
template void prm_step_scores_rows<c10::Half>(const c10::Half*, int64_t, int64_t, const int64_t*, const float*, int,
                                              const float*, int64_t, int64_t, float*);

}  // namespace CPU_CAPABILITY
}  // namespace mstar::cpu
