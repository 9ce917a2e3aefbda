// CUDA sample_from_logits: one 1024-thread block per row, sorting-free, same draws as the CPU kernel.
// Pass 1 (the only DRAM pass) fuses the max, the online sum Z of e = exp((l - max) / T), the first argmax
// and the NaN/+inf check; later passes re-read the row from L2 and recompute e in registers. Top-k: exact
// k-th largest e by radix select on e's fp32 bits (3 passes of 10 bits, shared-memory histogram). Draws:
// inverse CDF over {e >= max(t_k, min_p), e > pivot} in index order with a block-wide prefix scan; top-p by
// rejection with a rising pivot. Temperature-only rows take 2 passes. No float atomics: deterministic.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <climits>
#include <cstdint>

#include "mstar/philox.h"
#include "mstar/sample_from_logits.h"
#include "mstar/sample_from_logits_cuda.h"

namespace mstar::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kItems = 8;                   // consecutive elements per thread per round
constexpr int kRound = kThreads * kItems;  // elements per block-wide round
constexpr int kRadixBits = 10;             // e in [0, 1] has 30 significant bits: 3 radix passes
constexpr int kBins = 1 << kRadixBits;
static_assert(kBins == kThreads, "the radix histogram is scanned with one bin per thread");
static_assert(kSampleMaxVocab <= INT_MAX - kRound, "row-local indices must fit in int");
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kInf = __builtin_huge_valf();

using BlockReduceF = cub::BlockReduce<float, kThreads>;
using BlockScanF = cub::BlockScan<float, kThreads>;
using BlockScanI = cub::BlockScan<int, kThreads>;

struct SharedState {
  union {
    typename BlockReduceF::TempStorage reduce;
    typename BlockScanF::TempStorage scan_f;
    typename BlockScanI::TempStorage scan_i;
  } tmp;
  int hist[kBins];
  float f;
  int i0;
  int i1;
};

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// e = exp((l - m) / T) as exp2((l - m) * scale), scale = log2(e) / T. Rounded ops, never contracted, so every
// pass computes bit-identical e for the same logit.
__device__ __forceinline__ float e_of(float l, float m, float scale) {
  return exp2f(__fmul_rn(__fsub_rn(l, m), scale));
}

// One row of logits. load() gives the kItems elements from i0 as fp32, -inf past the end.
template <typename T>
struct Row {
  const T* p;
  int n;
  bool vec;  // row start 16-byte aligned: 16-byte loads

  __device__ __forceinline__ float at(int i) const { return to_float(p[i]); }

  __device__ __forceinline__ void load(int i0, float (&x)[kItems]) const {
    if (vec && i0 + kItems <= n) {
      if constexpr (sizeof(T) == 4) {
        const float4 a = *reinterpret_cast<const float4*>(p + i0);
        const float4 b = *reinterpret_cast<const float4*>(p + i0 + 4);
        x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w;
        x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
      } else {
        static_assert(sizeof(T) * kItems == 16, "16-bit types: one 16-byte load");
        const uint4 r = *reinterpret_cast<const uint4*>(p + i0);
        const T* h = reinterpret_cast<const T*>(&r);
#pragma unroll
        for (int j = 0; j < kItems; ++j) x[j] = to_float(h[j]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < kItems; ++j) x[j] = (i0 + j < n) ? to_float(p[i0 + j]) : -kInf;
    }
  }
};

// Block-wide reductions; every thread gets the result. Each ends with a barrier, so the shared temp
// storage and the broadcast slot can be reused right away.
__device__ __forceinline__ float block_sum(float v, SharedState& sm) {
  const float r = BlockReduceF(sm.tmp.reduce).Sum(v);
  if (threadIdx.x == 0) sm.f = r;
  __syncthreads();
  const float out = sm.f;
  __syncthreads();
  return out;
}

__device__ __forceinline__ float block_max(float v, SharedState& sm) {
  const float r = BlockReduceF(sm.tmp.reduce).Reduce(v, MaxOp{});
  if (threadIdx.x == 0) sm.f = r;
  __syncthreads();
  const float out = sm.f;
  __syncthreads();
  return out;
}

struct RowStats {
  float m;           // max logit (-inf for an all -inf row)
  float z;           // sum of exp2((l - m) * scale)
  int argmax;        // first index of the max
  bool bad;          // the row holds NaN or +inf
  float thread_max;  // max logit of this thread's slice of the row (-inf if none)
};

// Pass 1: max, online sum, first argmax, NaN/+inf flag.
template <typename T>
__device__ RowStats row_stats(const Row<T>& row, float scale, SharedState& sm) {
  if (threadIdx.x == 0) sm.i0 = INT_MAX;
  float m = -kInf, s = 0.f;
  int idx = INT_MAX;
  bool bad = false;
#pragma unroll 2
  for (int i0 = threadIdx.x * kItems; i0 < row.n; i0 += kRound) {
    float x[kItems];
    row.load(i0, x);
    float vm = -kInf;
    int vj = 0;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const bool ok = x[j] < kInf;  // false for NaN and +inf
      bad |= !ok;
      x[j] = ok ? x[j] : -kInf;
      if (x[j] > vm) vm = x[j], vj = j;
    }
    if (vm > m) {  // strict: an earlier maximum wins ties
      s = (m == -kInf) ? 0.f : s * exp2f((m - vm) * scale);
      m = vm;
      idx = i0 + vj;
    }
    if (m > -kInf) {
#pragma unroll
      for (int j = 0; j < kItems; ++j) s += exp2f((x[j] - m) * scale);
    }
  }
  RowStats st;
  st.thread_max = m;
  st.bad = __syncthreads_or(bad) != 0;
  st.m = block_max(m, sm);
  st.z = 0.f;
  st.argmax = 0;
  if (st.bad || st.m == -kInf) return st;  // block-uniform
  if (m == st.m) atomicMin(&sm.i0, idx);   // order-free: deterministic
  st.z = block_sum(m == -kInf ? 0.f : s * exp2f((m - st.m) * scale), sm);
  st.argmax = sm.i0;
  __syncthreads();
  return st;
}

// The k-th largest (k >= 1) of the values that `feed` hands to its callback (every value in (0, 1]), or 0
// when fewer than k values are fed. Radix select on the fp32 bit pattern (monotone as an unsigned integer
// for non-negative floats), most significant 10-bit digit first, with a shared-memory histogram.
template <typename Feed>
__device__ float radix_select_kth(int k, const Feed& feed, SharedState& sm) {
  uint32_t prefix = 0, mask = 0;
  int kk = k;  // rank still to find among the values matching prefix
#pragma unroll 1
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = (2 - pass) * kRadixBits;
    sm.hist[threadIdx.x] = 0;
    if (threadIdx.x == 0) sm.i0 = -1;
    __syncthreads();
    feed([&](float e) {
      const uint32_t u = __float_as_uint(e);
      if ((u & mask) == prefix) atomicAdd(&sm.hist[(u >> shift) & (kBins - 1)], 1);
    });
    __syncthreads();
    // Thread t holds bin 1023 - t, so an inclusive scan gives the count of digits >= bin.
    const int bin = kBins - 1 - static_cast<int>(threadIdx.x);
    const int c = sm.hist[bin];
    int at_least;
    BlockScanI(sm.tmp.scan_i).InclusiveSum(c, at_least);
    if (at_least >= kk && at_least - c < kk) {  // exactly one bin, unless fewer than kk values
      sm.i0 = bin;
      sm.i1 = kk - (at_least - c);
    }
    __syncthreads();
    const int digit = sm.i0, rest = sm.i1;
    __syncthreads();
    if (digit < 0) return 0.f;  // only on pass 0: fewer than k values
    prefix |= static_cast<uint32_t>(digit) << shift;
    mask |= static_cast<uint32_t>(kBins - 1) << shift;
    kk = rest;
  }
  return __uint_as_float(prefix);
}

// t_k, the k-th largest e of the row (1 <= k < n), or 0 when fewer than k entries of e are positive (then
// top-k keeps every token with mass). For k <= kThreads, the k-th largest of the per-thread maxima is a
// lower bound of t_k (those are k entries), so the row passes feed only e >= that bound: the histograms
// see about k entries instead of the whole row, which keeps shared-memory atomics off the hot path.
template <typename T>
__device__ float kth_largest_e(const Row<T>& row, float m, float scale, int k, float thread_max, SharedState& sm) {
  float floor_e = 0.f;
  if (k <= kThreads) {
    const float mine = e_of(thread_max, m, scale);  // the e of one entry of this thread's slice
    floor_e = radix_select_kth(k, [&](const auto& add) { if (mine > 0.f) add(mine); }, sm);
  }
  return radix_select_kth(
      k,
      [&](const auto& add) {
        for (int i0 = threadIdx.x * kItems; i0 < row.n; i0 += kRound) {
          float x[kItems];
          row.load(i0, x);
#pragma unroll
          for (int j = 0; j < kItems; ++j) {
            const float e = e_of(x[j], m, scale);
            if (e > 0.f && e >= floor_e) add(e);
          }
        }
      },
      sm);
}

// Sums of e over {e >= ge0, e > gt0} and, if `two`, over {e >= ge1, e > gt1}, in one pass.
template <typename T>
__device__ float2 masked_sums(const Row<T>& row, float m, float scale, float ge0, float gt0, bool two, float ge1,
                              float gt1, SharedState& sm) {
  float s0 = 0.f, s1 = 0.f;
  for (int i0 = threadIdx.x * kItems; i0 < row.n; i0 += kRound) {
    float x[kItems];
    row.load(i0, x);
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const float e = e_of(x[j], m, scale);
      s0 += (e >= ge0 && e > gt0) ? e : 0.f;
      s1 += (e >= ge1 && e > gt1) ? e : 0.f;
    }
  }
  float2 r;
  r.x = block_sum(s0, sm);
  r.y = two ? block_sum(s1, sm) : 0.f;
  return r;
}

// Inverse-CDF draw over the kept set {e >= ge, e > gt, e > 0} in index order: the first index whose running
// mass exceeds target. Block-wide exclusive scan per round; stops at the round that crosses. If rounding
// leaves target at or above the total, the last kept index; -1 when nothing is kept.
template <typename T>
__device__ int scan_pick(const Row<T>& row, float m, float scale, float ge, float gt, float target,
                         SharedState& sm) {
  if (threadIdx.x == 0) sm.i0 = INT_MAX, sm.i1 = -1;
  __syncthreads();
  float cum = 0.f;  // kept mass of the rounds before this one
  int last = -1;
  for (int base = 0; base < row.n; base += kRound) {  // block-uniform trip count: every thread scans
    const int i0 = base + static_cast<int>(threadIdx.x) * kItems;
    float w[kItems];
    row.load(i0, w);
    float local = 0.f;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const float e = e_of(w[j], m, scale);
      const bool keep = e >= ge && e > gt && e > 0.f;
      w[j] = keep ? e : 0.f;
      local += w[j];
      if (keep) last = i0 + j;
    }
    float before, round_mass;
    BlockScanF(sm.tmp.scan_f).ExclusiveSum(local, before, round_mass);
    if (cum + round_mass > target) {  // block-uniform: the draw lands in this round
      float run = cum + before;
      int cand = INT_MAX;
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        if (w[j] > 0.f) {
          run += w[j];
          if (run > target) {
            cand = i0 + j;
            break;
          }
        }
      }
      if (cand != INT_MAX) atomicMin(&sm.i0, cand);
      __syncthreads();
      const int found = sm.i0;
      __syncthreads();
      if (found != INT_MAX) return found;
    }
    cum += round_mass;
    __syncthreads();  // the scan's temp storage is reused next round
  }
  if (last >= 0) atomicMax(&sm.i1, last);
  __syncthreads();
  const int fallback = sm.i1;
  __syncthreads();
  return fallback;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sample_from_logits_kernel(const T* __restrict__ logits, int V, const SampleRowParams* __restrict__ params,
                              int64_t* __restrict__ tokens, float* __restrict__ logprobs) {
  __shared__ SharedState sm;
  const int64_t b = blockIdx.x;
  const T* row_ptr = logits + b * static_cast<int64_t>(V);
  const Row<T> row{row_ptr, V, reinterpret_cast<uintptr_t>(row_ptr) % 16 == 0};
  const SampleRowParams& p = params[b];  // fields re-read at use (L1): keeps registers free, no spills
  const bool greedy = p.temperature < kGreedyTemperature;  // also the tiny T whose 1 / T overflows
  // log2(e) / T, clamped so that a tiny T gives 0 * scale == 0 for the max rather than 0 * inf.
  const float scale = greedy ? kLog2e : fminf(kLog2e / p.temperature, FLT_MAX);

  const RowStats st = row_stats(row, scale, sm);
  int64_t token;
  float logprob = __int_as_float(0x7fc00000);  // NaN for rows without a token
  if (st.bad) {
    token = kStatusNonFinite;
  } else if (st.m == -kInf) {
    token = kStatusAllMasked;
  } else if (greedy) {
    token = st.argmax;
    logprob = -logf(st.z);
  } else {
    const bool use_k = p.top_k > 0 && p.top_k < V;
    const bool use_p = p.top_p < 1.f;
    const float t_k = use_k ? kth_largest_e(row, st.m, scale, static_cast<int>(p.top_k), st.thread_max, sm) : 0.f;
    const float ge = fmaxf(t_k, p.min_p);  // kept: e >= ge (top-k and min-p)
    float z_k = st.z;                      // top-k mass: top-p is relative to it
    float z_r = st.z;                      // mass of what the next draw proposes from
    const bool need_zr = ge > 0.f && !(use_k && ge == t_k);
    if (use_k || need_zr) {
      const float2 s = masked_sums(row, st.m, scale, t_k, -1.f, need_zr, ge, -1.f, sm);
      if (use_k) z_k = s.x;
      z_r = ge > 0.f ? (need_zr ? s.y : z_k) : st.z;
    }
    float gt = -1.f;  // exclusive lower bound raised by rejected top-p proposals
    int tok = -1;
    for (uint32_t draw = 0;; ++draw) {
      const float target = philox_uniform(p.seed, p.offset, draw) * z_r;
      tok = scan_pick(row, st.m, scale, ge, gt, target, sm);
      if (tok < 0) {  // nothing kept has mass (cannot happen for a finite row): the max
        tok = st.argmax;
        break;
      }
      if (!use_p) break;
      const float e_tok = e_of(row.at(tok), st.m, scale);
      const float above = masked_sums(row, st.m, scale, -1.f, e_tok, false, 0.f, 0.f, sm).x;  // mass > e_tok
      if (above < p.top_p * z_k || !(e_tok > gt)) break;
      gt = e_tok;  // every token at most this probable fails top-p too
      z_r = above;  // = mass of {e > gt}; gt >= ge already holds
    }
    token = tok;
    logprob = __fmul_rn(__fsub_rn(row.at(tok), st.m), scale) * kLn2 - logf(st.z);
  }
  if (threadIdx.x == 0) {
    tokens[b] = token;
    if (logprobs != nullptr) logprobs[b] = logprob;
  }
}

__global__ void pack_sample_params_kernel(const float* __restrict__ temperature, const int64_t* __restrict__ top_k,
                                          const float* __restrict__ top_p, const float* __restrict__ min_p,
                                          const int64_t* __restrict__ seed, uint64_t offset, int64_t B,
                                          SampleRowParams* __restrict__ out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  SampleRowParams r;
  r.temperature = temperature[b];
  r.top_k = top_k[b];
  r.top_p = top_p[b];
  r.min_p = min_p[b];
  r.seed = static_cast<uint64_t>(seed[b]);
  r.offset = offset;
  out[b] = r;
}

}  // namespace

cudaError_t launch_pack_sample_params(const float* temperature, const int64_t* top_k, const float* top_p,
                                      const float* min_p, const int64_t* seed, uint64_t offset, int64_t B,
                                      SampleRowParams* out, cudaStream_t stream) {
  if (B < 0) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  constexpr int kPackThreads = 256;
  const int64_t blocks = (B + kPackThreads - 1) / kPackThreads;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  pack_sample_params_kernel<<<static_cast<unsigned>(blocks), kPackThreads, 0, stream>>>(temperature, top_k, top_p,
                                                                                     min_p, seed, offset, B, out);
  return cudaGetLastError();
}

cudaError_t launch_sample_from_logits(const void* logits, int dtype, int64_t B, int64_t V,
                                      const SampleRowParams* params_device, int64_t* tokens, float* logprobs,
                                      cudaStream_t stream) {
  if (B < 0 || B > INT_MAX || V <= 0 || V > kSampleMaxVocab) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(B));
  const int v = static_cast<int>(V);
  switch (dtype) {
    case kSampleF32:
      sample_from_logits_kernel<float>
          <<<grid, kThreads, 0, stream>>>(static_cast<const float*>(logits), v, params_device, tokens, logprobs);
      break;
    case kSampleBF16:
      sample_from_logits_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(logits), v, params_device, tokens, logprobs);
      break;
    case kSampleF16:
      sample_from_logits_kernel<__half>
          <<<grid, kThreads, 0, stream>>>(static_cast<const __half*>(logits), v, params_device, tokens, logprobs);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace mstar::cuda
