// CPU sample_from_logits, one row at a time, compiled per CPU_CAPABILITY (DEFAULT/AVX2/AVX512); at::vec
// loops, the vocabulary is never sorted, equal logits always get bit-equal e. Temperature-only rows: one
// DRAM pass of tile max + sum of exp((l - tile max) / T) (online softmax), nothing stored. Top-k rows
// (k <= 1024): the DRAM pass keeps only candidates with logit >= a rising threshold; filters run on their
// e, and a bound proves no other token reaches the k-th e (else the general path). General filtered rows:
// max pass, e = exp((l - max) / T) into an L2 buffer, streaming top-k, top-p by rejection over a rising
// pivot whose mass pass leaves the per-tile masses for the next proposal.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
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
  const Vec ninf(-std::numeric_limits<float>::infinity());
  Vec a0 = ninf, a1 = ninf, a2 = ninf, a3 = ninf;  // four chains: the NaN-propagating max is latency-bound
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    a0 = at::vec::maximum(a0, Vec::loadu(buf + i));
    a1 = at::vec::maximum(a1, Vec::loadu(buf + i + kW));
    a2 = at::vec::maximum(a2, Vec::loadu(buf + i + 2 * kW));
    a3 = at::vec::maximum(a3, Vec::loadu(buf + i + 3 * kW));
  }
  for (; i + kW <= n; i += kW) a0 = at::vec::maximum(a0, Vec::loadu(buf + i));
  const Vec acc = at::vec::maximum(at::vec::maximum(a0, a1), at::vec::maximum(a2, a3));
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

// buf[i] = exp((src[i] - m) * inv_t) (src may be buf); returns the sum and, if asked, the max of the results.
// The tail goes through the same vector exp as the body, so equal logits always get equal e (the top-k
// and top-p rules keep or drop ties together).
inline double exp_shift_sum_to(const float* src, float* buf, int64_t n, float m, float inv_t,
                               float* emax = nullptr) {
  const Vec vm(m), vs(inv_t), zero(0.f);
  Vec acc0(0.f), acc1(0.f), mx0(0.f), mx1(0.f);  // e is never NaN here: clamp_min is a plain max
  int64_t i = 0;
  for (; i + 2 * kW <= n; i += 2 * kW) {
    const Vec e0 = ((Vec::loadu(src + i) - vm) * vs).exp_u20();
    const Vec e1 = ((Vec::loadu(src + i + kW) - vm) * vs).exp_u20();
    e0.store(buf + i);
    e1.store(buf + i + kW);
    acc0 = acc0 + e0;
    acc1 = acc1 + e1;
    mx0 = at::vec::clamp_min(mx0, e0);
    mx1 = at::vec::clamp_min(mx1, e1);
  }
  for (; i < n; i += kW) {
    const int64_t rest = std::min(kW, n - i);
    const Vec e = Vec::set(zero, ((Vec::loadu(src + i, rest) - vm) * vs).exp_u20(), rest);
    e.store(buf + i, rest);
    acc0 = acc0 + e;
    mx0 = at::vec::clamp_min(mx0, e);
  }
  if (emax) {
    const Vec mx = at::vec::clamp_min(mx0, mx1);
    *emax = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::clamp_min(a, b); }, mx);
  }
  return at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc0 + acc1);
}
inline double exp_shift_sum(float* buf, int64_t n, float m, float inv_t, float* emax = nullptr) {
  return exp_shift_sum_to(buf, buf, n, m, inv_t, emax);
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
  Vec acc0(0.f), acc1(0.f);
  int64_t i = 0;
  if (ge <= gt) {  // one comparison: x > gt implies x >= ge
    for (; i + 2 * kW <= n; i += 2 * kW) {
      const Vec x0 = Vec::loadu(buf + i), x1 = Vec::loadu(buf + i + kW);
      acc0 = acc0 + Vec::blendv(zero, x0, x0 > vgt);
      acc1 = acc1 + Vec::blendv(zero, x1, x1 > vgt);
    }
  }
  for (; i + kW <= n; i += kW) {
    const Vec x = Vec::loadu(buf + i);
    acc0 = acc0 + Vec::blendv(zero, x, (x >= vge) & (x > vgt));
  }
  double s = at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc0 + acc1);
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

// Top-k rows (k <= kCandMaxK) are sampled from candidates collected in the one DRAM pass, by logit:
// e is not monotone in l bit for bit (exp_u20 wobbles by an ulp), so the logit pass only narrows the row
// to a superset; the k-th largest e and all filtering are then done in e on the candidates, and a bound
// on the e of the best non-candidate logit proves that no other token can reach the k-th largest e.
constexpr int64_t kCandMaxK = 1024;
constexpr int64_t kFallback = std::numeric_limits<int64_t>::min();  // cand path could not prove its set

struct Cand {
  float v;     // logit, then e
  uint32_t i;  // token index
};

// e of one value through the same vector exp as the row passes (bit-equal to them).
inline float exp_one(float x, float m, float inv_t) {
  float t = x;
  exp_shift_sum(&t, 1, m, inv_t);
  return t;
}

struct Tile {
  float max;   // tile max of the logits
  double sum;  // sum of exp((l - tile max) / T) over the tile
};

// Per-thread scratch, reused across rows.
struct Scratch {
  std::unique_ptr<float[]> buf;  // V floats: the row's e (filtered rows), or its fp32 copy (bf16/fp16)
  int64_t cap = 0;
  std::vector<Tile> tiles;
  std::vector<float> emax;     // per-tile max e
  std::vector<double> tsum;    // per-tile mass of the current restricted set
  std::vector<double> tnext;   // per-tile mass above the last top-p proposal
  std::vector<float> candf;    // top-k streaming selection over e (large k)
  std::vector<Cand> cand;      // (e, index) candidates of the top-k fast path
  std::vector<float> lv;       // candidate logits, then e (top-k fast path)
  std::vector<uint32_t> li;    // their token indices
  float tile[kChunk];          // one converted tile (bf16/fp16)
  float* row_buf(int64_t V) {
    if (cap < V) buf.reset(new float[static_cast<size_t>(V)]), cap = V;
    return buf.get();
  }
};

// log of the unfiltered normaliser from per-tile sums relative to each tile max (online softmax).
inline double tiles_z(std::vector<Tile>& tiles, float m, float inv_t) {
  double z = 0.0;
  for (auto& t : tiles)
    if (t.max != -std::numeric_limits<float>::infinity()) z += (t.sum *= std::exp(static_cast<double>(t.max - m) * inv_t));
  return z;
}

// Number of list values >= t.
inline int64_t count_ge(const float* v, int64_t n, float t) {
  const Vec vt(t);
  int64_t cnt = 0, j = 0;
  for (; j + kW <= n; j += kW) cnt += __builtin_popcount(lane_mask(Vec::loadu(v + j) >= vt));
  for (; j < n; ++j) cnt += v[j] >= t;
  return cnt;
}

// Top-k fast path (1 <= k <= kCandMaxK, T > 0): one DRAM pass keeps the row max and a candidate list of
// every token whose logit is >= th, a push threshold that rises (by bisection on the list's values) to
// about the (k + slack)-th largest logit seen so far; e is computed for the candidates only. Tokens left
// out have logits < th, so e <= bound(th); returns kFallback when that bound does not prove they all
// fall below the k-th largest e of the candidates.
template <typename scalar_t>
int64_t sample_topk_row(const scalar_t* row, int64_t V, const SampleRowParams& p, float inv_t, Scratch& s,
                        float* logprob) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int64_t k = p.top_k;
  const int64_t keep = k + std::max<int64_t>(16, k / 4);  // list size a cut aims for
  const int64_t n_tiles = (V + kChunk - 1) / kChunk;
  int64_t cap = 2 * keep, n = 0;
  auto& lv = s.lv;  // candidate logits (then e) and their indices
  auto& li = s.li;
  lv.resize(static_cast<size_t>(cap + kW));
  li.resize(static_cast<size_t>(cap + kW));
  float th = -kInf;
  auto cut = [&] {  // raise th as far as keeps >= keep values, drop the values below it
    float lo = th, hi = vmax(lv.data(), n);
    if (lo == -kInf) {  // first cut: start from the smallest finite value, if enough are finite
      float lo_fin = kInf;
      for (int64_t j = 0; j < n; ++j)
        if (lv[j] > -kInf) lo_fin = std::min(lo_fin, lv[j]);
      if (count_ge(lv.data(), n, lo_fin) >= keep) lo = lo_fin;
    }
    if (lo > -kInf) {
      for (int it = 0; it < 14; ++it) {
        const float mid = lo + (hi - lo) * 0.5f;
        if (!(mid > lo && mid < hi)) break;
        if (count_ge(lv.data(), n, mid) >= keep) lo = mid;
        else hi = mid;
      }
      th = lo;
      int64_t w = 0;
      for (int64_t j = 0; j < n; ++j) {
        lv[w] = lv[j];
        li[w] = li[j];
        w += lv[j] >= th;
      }
      n = w;
    }
    if (2 * n > cap) {  // ties (or -inf) keep the list long: make room
      cap = 2 * n;
      lv.resize(static_cast<size_t>(cap + kW));
      li.resize(static_cast<size_t>(cap + kW));
    }
  };
  if (logprob) s.tiles.resize(static_cast<size_t>(n_tiles));
  float m = -kInf;
  for (int64_t c = 0; c < n_tiles; ++c) {
    const int64_t lo = c * kChunk, len = std::min(kChunk, V - lo);
    const float* x;
    if constexpr (std::is_same_v<scalar_t, float>) {
      x = row + lo;
    } else {
      to_float(row + lo, s.tile, len);
      x = s.tile;
    }
    // The tile max first (its own loop: an accumulator live across the cut() call below would be kept
    // in memory by the compiler, a store per vector); a tile whose max is below th pushes nothing.
    const float cm = vmax(x, len);
    int64_t i = cm >= th ? 0 : len;
    for (;;) {
      // Nothing in this loop that the compiler must keep in memory (no call, local pointers): when the
      // list is full it leaves, the list is cut, and the scan resumes. lv/li have room for one vector more.
      float* const L = lv.data();
      uint32_t* const I = li.data();
      const Vec vth(th);
      int64_t nn = n;
      const int64_t ncap = cap;
      for (; i + kW <= len && nn < ncap; i += kW) {
        // Every lane at or above th at load time is pushed (a superset is fine). Pushes are rare and at
        // random places, so the first one is done without a branch (stored always, counted if real).
        uint32_t mask = lane_mask(Vec::loadu(x + i) >= vth);
        const int first = __builtin_ctz(mask | (1u << (kW - 1)));
        L[nn] = x[i + first];
        I[nn] = static_cast<uint32_t>(lo + i + first);
        nn += mask != 0;
        mask &= mask - 1;
        while (mask) {
          const int lane = __builtin_ctz(mask);
          mask &= mask - 1;
          L[nn] = x[i + lane];
          I[nn] = static_cast<uint32_t>(lo + i + lane);
          ++nn;
        }
      }
      n = nn;
      if (n < cap) break;
      cut();
    }
    for (; i < len; ++i) {
      if (x[i] >= th) {
        lv[n] = x[i];
        li[n] = static_cast<uint32_t>(lo + i);
        if (++n >= cap) cut();
      }
    }
    if (std::isnan(cm) || cm == kInf) return kStatusNonFinite;
    m = std::max(m, cm);
    if (logprob) s.tiles[c] = {cm, cm == -kInf ? 0.0 : exp_sum(x, len, cm, inv_t)};
  }
  if (m == -kInf) return kStatusAllMasked;

  // e of the candidates, through the same vector exp as every row pass.
  exp_shift_sum(lv.data(), n, m, inv_t);
  auto& cand = s.cand;
  cand.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) cand[j] = {lv[j], li[j]};
  auto by_value = [](const Cand& a, const Cand& b) { return a.v > b.v; };
  std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), by_value);
  const float t_k = cand[k - 1].v;
  const auto kept_end = std::partition(cand.begin() + k, cand.end(), [t_k](const Cand& c) { return c.v >= t_k; });
  if (th != -kInf) {
    // Every left-out token has logit < th, so d <= d_th. exp_u20 is within 3.9e-7 relative of exp for
    // d > -86.5 (checked exhaustively) and at most 4.5e-38 for d <= -86: e <= bound for all of them.
    const float d_th = (th - m) * inv_t;
    const float bound = d_th > -86.f ? exp_one(th, m, inv_t) * (1.f + 0x1p-18f) : 1e-37f;
    if (!(bound < t_k)) return kFallback;
  }
  const int64_t nk = kept_end - cand.begin();
  double z_k = 0.0;
  for (int64_t j = 0; j < nk; ++j) z_k += cand[j].v;
  float thr = std::max(t_k, p.min_p);
  if (p.top_p < 1.f) {  // whole tie groups, most probable first, while the mass above them is < p * z_k
    std::sort(cand.begin(), kept_end, by_value);
    const double P = static_cast<double>(p.top_p) * z_k;
    double above = 0.0;
    float t_p = cand[0].v;
    for (int64_t j = 0; j < nk && above < P;) {
      t_p = cand[j].v;
      for (; j < nk && cand[j].v == t_p; ++j) above += cand[j].v;
    }
    thr = std::max(thr, t_p);
  }
  const auto fin_end = std::partition(cand.begin(), kept_end, [thr](const Cand& c) { return c.v >= thr && c.v > 0.f; });
  std::sort(cand.begin(), fin_end, [](const Cand& a, const Cand& b) { return a.i < b.i; });
  double z_r = 0.0;
  for (auto it = cand.begin(); it != fin_end; ++it) z_r += it->v;
  const double target = static_cast<double>(philox_uniform(p.seed, p.offset, 0)) * z_r;
  int64_t tok = -1;
  double cum = 0.0;
  for (auto it = cand.begin(); it != fin_end; ++it) {
    tok = it->i;
    cum += it->v;
    if (cum > target) break;
  }
  if (tok < 0) return kFallback;  // nothing with mass (cannot happen: the max has e == 1)
  if (logprob) {
    float l_tok;
    to_float(row + tok, &l_tok, 1);
    *logprob = (l_tok - m) * inv_t - static_cast<float>(std::log(tiles_z(s.tiles, m, inv_t)));
  }
  return tok;
}

// Filtered rows without the top-k fast path: a DRAM pass for the row max, then e = exp((l - m) / T) for
// the whole row into buf (L2-resident) with each tile's max e and mass; top-k by streaming selection,
// top-p by rejection sampling over a rising pivot (no sort), min-p as e >= min_p.
template <typename scalar_t>
int64_t sample_filtered_row(const scalar_t* row, int64_t V, const SampleRowParams& p, float inv_t, Scratch& s,
                            float* logprob) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr bool kF32 = std::is_same_v<scalar_t, float>;
  const bool use_k = p.top_k > 0 && p.top_k < V;
  const bool use_p = p.top_p < 1.f;
  float* buf = s.row_buf(V);
  const int64_t n_tiles = (V + kChunk - 1) / kChunk;
  auto& emax = s.emax;
  auto& tsum = s.tsum;
  auto& tnext = s.tnext;
  emax.resize(static_cast<size_t>(n_tiles));
  tsum.resize(static_cast<size_t>(n_tiles));
  tnext.resize(static_cast<size_t>(n_tiles));
  // The tile as fp32: fp32 rows are read in place, bf16/fp16 tiles are converted into an L1 scratch (the
  // reduced-precision row is re-read from cache by the second pass instead of keeping an fp32 copy).
  auto tile_src = [&](int64_t lo, int64_t len) -> const float* {
    if constexpr (kF32) {
      return row + lo;
    } else {
      to_float(row + lo, s.tile, len);
      return s.tile;
    }
  };
  // The DRAM pass: the row max.
  float m = -kInf;
  for (int64_t c = 0; c < n_tiles; ++c) {
    const int64_t lo = c * kChunk, len = std::min(kChunk, V - lo);
    const float cm = vmax(tile_src(lo, len), len);
    if (std::isnan(cm) || cm == kInf) return kStatusNonFinite;
    m = std::max(m, cm);
  }
  if (m == -kInf) return kStatusAllMasked;
  // The cache-resident pass: e against the row max into buf, with each tile's max e and mass.
  double z = 0.0;
  for (int64_t c = 0; c < n_tiles; ++c) {
    const int64_t lo = c * kChunk, len = std::min(kChunk, V - lo);
    z += (tsum[c] = exp_shift_sum_to(tile_src(lo, len), buf + lo, len, m, inv_t, &emax[c]));
  }
  const float* e = buf;
  const float* em = emax.data();
  // Per-tile mass of {e >= ge, e > gt} into ts (0 for tiles that cannot hold any); returns the total.
  auto tile_masses = [&](std::vector<double>& ts, float ge, float gt) {
    double tot = 0.0;
    for (int64_t lo = 0, c = 0; lo < V; lo += kChunk, ++c)
      tot += (ts[c] = tile_may_hold(em[c], ge, gt) ? masked_sum(e + lo, std::min(kChunk, V - lo), ge, gt) : 0.0);
    return tot;
  };

  const float t_k = use_k ? kth_largest(e, V, em, p.top_k, s.candf) : 0.f;
  const float ge = std::max(t_k, p.min_p);
  double z_r = ge > 0.f ? tile_masses(tsum, ge, -1.f) : z;  // mass of what the first proposal draws from
  const double z_k = !use_k ? z : (ge == t_k ? z_r : (use_p ? masked_sum_tiles(e, V, em, t_k, -1.f) : 0.0));
  float gt = -1.f;  // exclusive lower bound raised by rejected top-p proposals

  // Rejection sampling for top-p over a rising pivot: propose from {e >= ge, e > gt} by inverse CDF (the
  // tile masses pick the tile, one tile is scanned), accept if the mass strictly above the proposal is
  // < p * z_k; else the proposal becomes the pivot, and the pass that measured the mass above it has
  // left exactly the per-tile masses the next proposal needs.
  int64_t tok = -1;
  for (uint32_t draw = 0;; ++draw) {
    const double target = static_cast<double>(philox_uniform(p.seed, p.offset, draw)) * z_r;
    double cum = 0.0;
    int64_t c = 0, last = -1;
    for (; c < n_tiles; ++c) {
      if (tsum[c] <= 0.0) continue;
      last = c;
      if (cum + tsum[c] > target) break;
      cum += tsum[c];
    }
    const bool ran_past = c == n_tiles;  // rounding left target at or above the total
    if (ran_past) c = last;                // then the last tile with mass, its last kept token
    if (c < 0) {  // nothing left with mass (cannot happen for a finite row); fall back to the max
      tok = first_index_of(e, V, 1.f);
      break;
    }
    const int64_t lo = c * kChunk;
    const int64_t t = scan_pick(e + lo, std::min(kChunk, V - lo), ge, gt,
                                ran_past ? std::numeric_limits<double>::infinity() : target - cum);
    tok = t >= 0 ? lo + t : first_index_of(e, V, 1.f);
    if (!use_p) break;
    const double above = tile_masses(tnext, -1.f, e[tok]);  // mass strictly more probable than tok
    if (above < static_cast<double>(p.top_p) * z_k) break;
    gt = e[tok];  // every token at most this probable fails top-p too
    z_r = above;  // = mass of {e > gt}; gt >= ge already holds
    std::swap(tsum, tnext);
  }
  if (logprob) {
    float l_tok;
    to_float(row + tok, &l_tok, 1);
    *logprob = (l_tok - m) * inv_t - static_cast<float>(std::log(z));
  }
  return tok;
}


template <typename scalar_t>
int64_t sample_row(const scalar_t* row, int64_t V, const SampleRowParams& p, Scratch& s, float* logprob) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr bool kF32 = std::is_same_v<scalar_t, float>;
  const bool greedy = p.temperature < kGreedyTemperature;  // also the tiny T whose 1 / T overflows
  const float inv_t = greedy ? 1.f : 1.f / p.temperature;
  const bool use_k = p.top_k > 0 && p.top_k < V;
  const bool use_p = p.top_p < 1.f;
  const bool filtered = use_k || use_p || p.min_p > 0.f;
  const bool temp_only = !greedy && !filtered;
  if (!greedy && use_k && p.top_k <= kCandMaxK && V < (int64_t{1} << 32)) {
    const int64_t tok = sample_topk_row(row, V, p, inv_t, s, logprob);
    if (tok != kFallback) return tok;
  }
  if (!greedy && filtered) return sample_filtered_row(row, V, p, inv_t, s, logprob);
  // Greedy and temperature-only rows. The DRAM pass, tile by tile while the tile is in L1: tile max
  // (bf16/fp16 are converted into buf on the way; fp32 rows are read in place), and for temperature-only
  // rows e relative to the tile max and its sum (online softmax).
  float* buf = s.row_buf(V);
  const float* src = buf;  // the row as fp32
  if constexpr (kF32) src = row;
  const int64_t n_tiles = (V + kChunk - 1) / kChunk;
  auto& tiles = s.tiles;
  tiles.resize(static_cast<size_t>(n_tiles));
  float m = -kInf;
  for (int64_t c = 0; c < n_tiles; ++c) {
    const int64_t lo = c * kChunk, len = std::min(kChunk, V - lo);
    if constexpr (!kF32) to_float(row + lo, buf + lo, len);
    const float* x = src + lo;
    const float cm = vmax(x, len);
    if (std::isnan(cm) || cm == kInf) return kStatusNonFinite;
    tiles[c].max = cm;
    m = std::max(m, cm);
    if (temp_only) tiles[c].sum = cm == -kInf ? 0.0 : exp_sum(x, len, cm, inv_t);  // masked tile: no mass
  }
  if (m == -kInf) return kStatusAllMasked;

  if (greedy) {  // lowest index among the maxima
    const int64_t tok = first_index_of(src, V, m);
    if (logprob) *logprob = -static_cast<float>(std::log(exp_sum(src, V, m, 1.f)));
    return tok;
  }
  if (!filtered) {  // temperature only: scale tile sums to the row max, walk them, then one tile
    const double z = tiles_z(tiles, m, inv_t);
    const double target = static_cast<double>(philox_uniform(p.seed, p.offset, 0)) * z;
    double cum = 0.0;
    int64_t c = 0;
    for (; c + 1 < n_tiles && cum + tiles[c].sum <= target; ++c) cum += tiles[c].sum;
    while (c > 0 && tiles[c].sum <= 0.0) --c;  // rounding ran past the last tile with mass
    const int64_t lo = c * kChunk, len = std::min(kChunk, V - lo);
    exp_shift_sum_to(src + lo, buf + lo, len, tiles[c].max, inv_t);  // e of the picked tile, as its sum saw them
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
  return -1;  // unreachable: filtered rows are handled above
}

}  // namespace

// Rows [begin, end) of a contiguous [B, V] logits matrix; per-row parameters already expanded.
template <typename scalar_t>
void sample_from_logits_rows(const scalar_t* logits, int64_t V, int64_t begin, int64_t end,
                             const SampleRowParams* params, int64_t* tokens, float* logprobs) {
  Scratch s;
  for (int64_t b = begin; b < end; ++b)
    tokens[b] = sample_row(logits + b * V, V, params[b], s, logprobs ? logprobs + b : nullptr);
}

template void sample_from_logits_rows<float>(const float*, int64_t, int64_t, int64_t, const SampleRowParams*,
                                             int64_t*, float*);
template void sample_from_logits_rows<c10::BFloat16>(const c10::BFloat16*, int64_t, int64_t, int64_t,
                                                     const SampleRowParams*, int64_t*, float*);
template void sample_from_logits_rows<c10::Half>(const c10::Half*, int64_t, int64_t, int64_t,
                                                 const SampleRowParams*, int64_t*, float*);

}  // namespace CPU_CAPABILITY
}  // namespace mstar::cpu
