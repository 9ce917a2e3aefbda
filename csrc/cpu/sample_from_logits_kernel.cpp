// CPU sample_from_logits, one row at a time, compiled once per CPU_CAPABILITY (DEFAULT/AVX2/AVX512).
// Sorting-free. The one DRAM pass reads the row tile by tile (L1-sized) and fuses the fp32 conversion,
// the tile max and sum of e = exp((l - tile max) / T); tiles are rescaled to the row max afterwards
// (online softmax). Temperature-only rows store nothing (fp32 rows are not even copied): the inverse-CDF
// walk over tile sums picks a tile, whose e are recomputed bit-identically. Filtered rows keep an fp32
// copy in L2 and compute e against the row max. Top-k is a streaming selection with a pruning
// threshold; top-p is rejection sampling over a rising pivot, so the row is never sorted. at::vec loops.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "mstar/philox.h"
#include "mstar/sample_from_logits.h"

namespace mstar::cpu {
inline namespace CPU_CAPABILITY {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();
constexpr int64_t kChunk = 2048;  // pass-1 tile: convert + max while the tile is in L1

namespace {

inline uint32_t lane_mask(const Vec& m) {  // bit i set where lane i of a comparison result is true
  return ~static_cast<uint32_t>(m.zero_mask()) & ((kW >= 32) ? 0xffffffffu : ((1u << kW) - 1u));
}

template <typename T>  // bf16 / fp16 -> fp32, two float vectors per reduced-precision vector
inline void to_float(const T* src, float* dst, int64_t n) {
  using RVec = at::vec::Vectorized<T>;
  int64_t i = 0;
  for (; i + RVec::size() <= n; i += RVec::size()) {
    auto [lo, hi] = at::vec::convert_to_float<T>(RVec::loadu(src + i));
    lo.store(dst + i);
    hi.store(dst + i + kW);
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
template <>
inline void to_float<float>(const float* src, float* dst, int64_t n) {
  std::copy(src, src + n, dst);
}

// Max over buf[0, n); NaN propagates.
inline float vmax(const float* buf, int64_t n) {
  Vec acc(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kW <= n; i += kW) acc = at::vec::maximum(acc, Vec::loadu(buf + i));
  float m = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, acc);
  for (; i < n; ++i) m = (std::isnan(buf[i]) || std::isnan(m)) ? NAN : std::max(m, buf[i]);
  return m;
}

inline int64_t first_index_of(const float* buf, int64_t n, float v) {
  const Vec vv(v);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    const uint32_t mask = lane_mask(Vec::loadu(buf + i) == vv);
    if (mask) return i + __builtin_ctz(mask);
  }
  for (; i < n; ++i)
    if (buf[i] == v) return i;
  return n - 1;
}

// In place: buf[i] = exp((buf[i] - m) * inv_t); returns the sum and, if asked, the max of the results.
// The tail goes through the same vector exp as the body, so equal logits always get equal e (the top-k
// and top-p rules keep or drop ties together).
inline double exp_shift_sum(float* buf, int64_t n, float m, float inv_t, float* emax = nullptr) {
  const Vec vm(m), vs(inv_t), zero(0.f);
  Vec acc(0.f), mx(0.f);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    const Vec e = ((Vec::loadu(buf + i) - vm) * vs).exp_u20();
    e.store(buf + i);
    acc = acc + e;
    mx = at::vec::maximum(mx, e);
  }
  if (i < n) {
    const int64_t rest = n - i;
    const Vec e = Vec::set(zero, ((Vec::loadu(buf + i, rest) - vm) * vs).exp_u20(), rest);
    e.store(buf + i, rest);
    acc = acc + e;
    mx = at::vec::maximum(mx, e);
  }
  if (emax) *emax = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, mx);
  return at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc);
}

// Sum of exp((x[i] - m) * inv_t), nothing stored: temperature-only rows need e of one tile only, which
// is recomputed bit-identically (same inputs, same vector exp) when that tile is picked.
inline double exp_sum(const float* x, int64_t n, float m, float inv_t) {
  const Vec vm(m), vs(inv_t), zero(0.f);
  Vec acc0(0.f), acc1(0.f);  // two accumulators: the adds do not serialize behind one another
  int64_t i = 0;
  for (; i + 2 * kW <= n; i += 2 * kW) {
    acc0 = acc0 + ((Vec::loadu(x + i) - vm) * vs).exp_u20();
    acc1 = acc1 + ((Vec::loadu(x + i + kW) - vm) * vs).exp_u20();
  }
  for (; i + kW <= n; i += kW) acc0 = acc0 + ((Vec::loadu(x + i) - vm) * vs).exp_u20();
  if (i < n) {
    const int64_t rest = n - i;
    acc1 = acc1 + Vec::set(zero, ((Vec::loadu(x + i, rest) - vm) * vs).exp_u20(), rest);
  }
  return at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc0 + acc1);
}

// Sum of buf[i] over buf[i] >= ge and buf[i] > gt.
inline double masked_sum(const float* buf, int64_t n, float ge, float gt) {
  const Vec vge(ge), vgt(gt), zero(0.f);
  Vec acc(0.f);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    const Vec x = Vec::loadu(buf + i);
    acc = acc + Vec::blendv(zero, x, (x >= vge) & (x > vgt));
  }
  double s = at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc);
  for (; i < n; ++i)
    if (buf[i] >= ge && buf[i] > gt) s += buf[i];
  return s;
}

// k-th largest value of e (1 <= k < V) by streaming selection: candidates above a threshold are
// collected, and when the list is full it is cut back to its k largest, which raises the threshold.
// Tiles whose max (emax) is not above the threshold are skipped whole.
inline float kth_largest(const float* e, int64_t V, const float* emax, int64_t k, std::vector<float>& cand) {
  const size_t cap = static_cast<size_t>(std::max<int64_t>(2 * k, 512));
  cand.clear();
  float th = -std::numeric_limits<float>::infinity();
  auto push = [&](float x) {
    cand.push_back(x);
    if (cand.size() >= cap) {
      std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), std::greater<float>());
      cand.resize(k);
      th = cand[k - 1];  // the k-th largest so far: values equal to it cannot change the answer
    }
  };
  for (int64_t lo = 0, c = 0; lo < V; lo += kChunk, ++c) {
    if (!(emax[c] > th)) continue;
    const int64_t hi = std::min(V, lo + kChunk);
    int64_t i = lo;
    for (; i + kW <= hi; i += kW) {
      uint32_t mask = lane_mask(Vec::loadu(e + i) > Vec(th));
      while (mask) {
        const int lane = __builtin_ctz(mask);
        mask &= mask - 1;
        if (e[i + lane] > th) push(e[i + lane]);
      }
    }
    for (; i < hi; ++i)
      if (e[i] > th) push(e[i]);
  }
  std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), std::greater<float>());
  return cand[k - 1];
}

// A tile can hold elements of {e >= ge, e > gt} only if its max can.
inline bool tile_may_hold(float emax, float ge, float gt) { return emax >= ge && emax > gt && emax > 0.f; }

// Sum of e over {e >= ge, e > gt}, skipping tiles that cannot contribute.
inline double masked_sum_tiles(const float* e, int64_t V, const float* emax, float ge, float gt) {
  double s = 0.0;
  for (int64_t lo = 0, c = 0; lo < V; lo += kChunk, ++c)
    if (tile_may_hold(emax[c], ge, gt)) s += masked_sum(e + lo, std::min(kChunk, V - lo), ge, gt);
  return s;
}

// Inverse-CDF draw over the restricted set {x >= ge, x > gt}: the first index whose running sum
// exceeds target. Sums blocks of kBlock elements (one horizontal reduction each) and steps into the
// block that crosses.
constexpr int64_t kBlock = 16 * kW;
inline int64_t scan_pick(const float* buf, int64_t n, float ge, float gt, double target) {
  const Vec vge(ge), vgt(gt), zero(0.f);
  double cum = 0.0;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    Vec acc(0.f);
    for (int64_t j = i; j < i + kBlock; j += kW) {
      const Vec x = Vec::loadu(buf + j);
      acc = acc + Vec::blendv(zero, x, (x >= vge) & (x > vgt));
    }
    const double block = at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc);
    if (cum + block > target) break;
    cum += block;
  }
  int64_t last = -1;
  for (; i < n; ++i) {
    const float x = buf[i];
    if (!(x >= ge && x > gt) || x <= 0.f) continue;
    cum += x;
    if (cum > target) return i;
    last = i;
  }
  if (last >= 0) return last;
  // Rounding left target at or above the total: take the last kept element with mass.
  for (int64_t j = n - 1; j >= 0; --j)
    if (buf[j] >= ge && buf[j] > gt && buf[j] > 0.f) return j;
  return -1;
}

// Inverse-CDF draw over {e >= ge, e > gt} for the whole row: tile sums first, then the crossing tile.
inline int64_t pick_tiles(const float* e, int64_t V, const float* emax, float ge, float gt, double target) {
  double cum = 0.0;
  int64_t last_lo = -1;
  for (int64_t lo = 0, c = 0; lo < V; lo += kChunk, ++c) {
    if (!tile_may_hold(emax[c], ge, gt)) continue;
    const int64_t len = std::min(kChunk, V - lo);
    const double ts = masked_sum(e + lo, len, ge, gt);
    if (ts <= 0.0) continue;
    if (cum + ts > target) {
      const int64_t t = scan_pick(e + lo, len, ge, gt, target - cum);
      if (t >= 0) return lo + t;
    }
    cum += ts;
    last_lo = lo;
  }
  if (last_lo < 0) return -1;  // rounding ran past the end: the last kept element
  return last_lo + scan_pick(e + last_lo, std::min(kChunk, V - last_lo), ge, gt,
                             std::numeric_limits<double>::infinity());
}

struct Tile {
  float max;   // tile max of the logits
  double sum;  // sum of exp((l - tile max) / T) over the tile
};

template <typename scalar_t>
int64_t sample_row(const scalar_t* row, int64_t V, const SampleRowParams& p, float* buf, std::vector<Tile>& tiles,
                   std::vector<float>& emax, std::vector<float>& cand, float* logprob) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const bool greedy = p.temperature == 0.f;
  const float inv_t = greedy ? 1.f : 1.f / p.temperature;
  // The DRAM pass, tile by tile while the tile is in L1: fp32 copy, tile max, and for temperature-only
  // rows e relative to the tile max and its sum (online softmax). Filtered rows compute e against the
  // row max in a second, L2-resident pass instead: e of equal logits must be bit-equal across tiles.
  const bool filtered = (p.top_k > 0 && p.top_k < V) || p.top_p < 1.f || p.min_p > 0.f;
  const bool temp_only = !greedy && !filtered;
  const int64_t n_tiles = (V + kChunk - 1) / kChunk;
  tiles.resize(static_cast<size_t>(n_tiles));
  float m = -kInf;
  for (int64_t c = 0; c < n_tiles; ++c) {
    const int64_t lo = c * kChunk, len = std::min(kChunk, V - lo);
    const float* x = buf + lo;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (temp_only) x = row + lo;  // fp32 temperature-only rows are read in place: no copy, no store
      else to_float(row + lo, buf + lo, len);
    } else {
      to_float(row + lo, buf + lo, len);
    }
    const float cm = vmax(x, len);
    if (std::isnan(cm) || cm == kInf) return kStatusNonFinite;
    tiles[c].max = cm;
    m = std::max(m, cm);
    if (temp_only) tiles[c].sum = cm == -kInf ? 0.0 : exp_sum(x, len, cm, inv_t);  // masked tile: no mass
  }
  if (m == -kInf) return kStatusAllMasked;

  if (greedy) {  // lowest index among the maxima
    const int64_t tok = first_index_of(buf, V, m);
    if (logprob) *logprob = -static_cast<float>(std::log(exp_shift_sum(buf, V, m, 1.f)));
    return tok;
  }
  if (!filtered) {  // temperature only: scale tile sums to the row max, walk them, then one tile
    double z = 0.0;
    for (auto& t : tiles)
      if (t.max != -kInf) z += (t.sum *= std::exp(static_cast<double>(t.max - m) * inv_t));
    const double target = static_cast<double>(philox_uniform(p.seed, p.offset, 0)) * z;
    double cum = 0.0;
    int64_t c = 0;
    for (; c + 1 < n_tiles && cum + tiles[c].sum <= target; ++c) cum += tiles[c].sum;
    while (c > 0 && tiles[c].sum <= 0.0) --c;  // rounding ran past the last tile with mass
    const int64_t lo = c * kChunk, len = std::min(kChunk, V - lo);
    if constexpr (std::is_same_v<scalar_t, float>) to_float(row + lo, buf + lo, len);  // bf16/fp16: still in buf
    exp_shift_sum(buf + lo, len, tiles[c].max, inv_t);  // e of the picked tile, as its sum saw them
    const double f = std::exp(static_cast<double>(tiles[c].max - m) * inv_t);
    int64_t tok = scan_pick(buf + lo, len, -1.f, -1.f, (target - cum) / f);
    if (tok < 0) tok = first_index_of(buf + lo, len, 1.f);
    tok += lo;
    if (logprob) {
      float l_tok;
      to_float(row + tok, &l_tok, 1);
      *logprob = (l_tok - m) * inv_t - static_cast<float>(std::log(z));
    }
    return tok;
  }
  // Filtered rows: e = exp((l - m) / T) for the whole row (max e == 1), with each tile's max e so the
  // passes below can skip tiles that cannot hold a kept token.
  emax.resize(static_cast<size_t>(n_tiles));
  double z = 0.0;
  for (int64_t c = 0; c < n_tiles; ++c) {
    const int64_t lo = c * kChunk, len = std::min(kChunk, V - lo);
    z += exp_shift_sum(buf + lo, len, m, inv_t, &emax[c]);
  }
  const float* e = buf;
  const float* em = emax.data();

  const bool use_k = p.top_k > 0 && p.top_k < V;
  const bool use_p = p.top_p < 1.f;
  const float t_k = use_k ? kth_largest(e, V, em, p.top_k, cand) : 0.f;
  const float ge = std::max(t_k, p.min_p);
  const double z_k = use_k ? masked_sum_tiles(e, V, em, t_k, -1.f) : z;
  double z_r = (ge > 0.f) ? (ge == t_k ? z_k : masked_sum_tiles(e, V, em, ge, -1.f)) : z;
  float gt = -1.f;  // exclusive lower bound raised by rejected top-p proposals

  int64_t tok = -1;
  for (uint32_t draw = 0;; ++draw) {
    const double target = static_cast<double>(philox_uniform(p.seed, p.offset, draw)) * z_r;
    tok = pick_tiles(e, V, em, ge, gt, target);
    if (tok < 0) {  // nothing left with mass (cannot happen for a finite row); fall back to the max
      tok = first_index_of(e, V, 1.f);
      break;
    }
    if (!use_p) break;
    const double above = masked_sum_tiles(e, V, em, -1.f, e[tok]);  // mass strictly more probable than tok
    if (above < static_cast<double>(p.top_p) * z_k) break;
    gt = e[tok];  // every token at most this probable fails top-p too
    z_r = above;  // = mass of {e > gt}; gt >= ge already holds
  }
  if (logprob) {
    float l_tok;
    to_float(row + tok, &l_tok, 1);
    *logprob = (l_tok - m) * inv_t - static_cast<float>(std::log(z));
  }
  return tok;
}

}  // namespace

// Rows [begin, end) of a contiguous [B, V] logits matrix; per-row parameters already expanded.
template <typename scalar_t>
void sample_from_logits_rows(const scalar_t* logits, int64_t V, int64_t begin, int64_t end,
                             const SampleRowParams* params, int64_t* tokens, float* logprobs) {
  std::vector<float> buf(static_cast<size_t>(V));
  std::vector<float> cand;
  std::vector<Tile> tiles;
  std::vector<float> emax;
  for (int64_t b = begin; b < end; ++b)
    tokens[b] = sample_row(logits + b * V, V, params[b], buf.data(), tiles, emax, cand,
                           logprobs ? logprobs + b : nullptr);
}

template void sample_from_logits_rows<float>(const float*, int64_t, int64_t, int64_t, const SampleRowParams*,
                                             int64_t*, float*);
template void sample_from_logits_rows<c10::BFloat16>(const c10::BFloat16*, int64_t, int64_t, int64_t,
                                                     const SampleRowParams*, int64_t*, float*);
template void sample_from_logits_rows<c10::Half>(const c10::Half*, int64_t, int64_t, int64_t,
                                                 const SampleRowParams*, int64_t*, float*);

}  // namespace CPU_CAPABILITY
}  // namespace mstar::cpu
