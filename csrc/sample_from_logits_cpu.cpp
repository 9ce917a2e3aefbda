// CPU launcher for mstar_fast::sample_from_logits: checks inputs, packs per-row parameters, picks the
// kernel compiled for this CPU's instruction set (AVX512 / AVX2 / DEFAULT) and runs rows in parallel
// with at::parallel_for. Kernel: csrc/cpu/sample_from_logits_kernel.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "mstar/cpu_level.h"
#include "mstar/sample_from_logits.h"
#include "ops.h"

namespace mstar::cpu {
#define MSTAR_DECLARE_ROWS(CAP)                                                                               \
  namespace CAP {                                                                                             \
  template <typename scalar_t>                                                                                \
  void sample_from_logits_rows(const scalar_t*, int64_t, int64_t, int64_t, const SampleRowParams*, int64_t*, \
                               float*);                                                                       \
  }
MSTAR_DECLARE_ROWS(DEFAULT)
MSTAR_DECLARE_ROWS(AVX2)
MSTAR_DECLARE_ROWS(AVX512)
#undef MSTAR_DECLARE_ROWS
}  // namespace mstar::cpu

namespace mstar_fast {

std::vector<mstar::SampleRowParams> pack_sample_params(const at::Tensor& logits, const at::Tensor& temperature,
                                                       const at::Tensor& top_k, const at::Tensor& top_p,
                                                       const at::Tensor& min_p, const at::Tensor& seed,
                                                       int64_t offset) {
  const int64_t B = logits.size(0);
  auto t = temperature.to(at::kCPU, at::kFloat).contiguous();
  auto k = top_k.to(at::kCPU, at::kLong).contiguous();
  auto tp = top_p.to(at::kCPU, at::kFloat).contiguous();
  auto mp = min_p.to(at::kCPU, at::kFloat).contiguous();
  auto sd = seed.to(at::kCPU, at::kLong).contiguous();
  std::vector<mstar::SampleRowParams> params(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    params[b] = mstar::SampleRowParams{t.data_ptr<float>()[b],  k.data_ptr<int64_t>()[b],
                                       tp.data_ptr<float>()[b], mp.data_ptr<float>()[b],
                                       static_cast<uint64_t>(sd.data_ptr<int64_t>()[b]),
                                       static_cast<uint64_t>(offset)};
  }
  return params;
}

namespace {

// The first row where `ok` is false, or -1 when every row is ok. One host sync.
int64_t first_bad_row(const at::Tensor& ok) {
  if (ok.numel() == 0 || ok.all().item<bool>()) return -1;
  return (~ok).nonzero()[0][0].item<int64_t>();
}

void check_row_range(const char* name, const at::Tensor& values, const at::Tensor& ok, const char* rule) {
  const int64_t row = first_bad_row(ok);
  if (row < 0) return;
  const auto v = values[row].to(at::kCPU);
  if (v.is_floating_point()) {
    TORCH_CHECK_VALUE(false, "sample_from_logits: ", name, " must be ", rule, "; row ", row, " has ", v.item<double>());
  }
  TORCH_CHECK_VALUE(false, "sample_from_logits: ", name, " must be ", rule, "; row ", row, " has ", v.item<int64_t>());
}

}  // namespace

void check_sample_inputs(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                         const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& seed,
                         int64_t offset, bool check_ranges) {
  // The same rules as mstar_fast/ops/sample_from_logits.py, for callers of torch.ops.mstar_fast.* that skip
  // the Python layer: a kernel must never see a parameter it would silently misread.
  TORCH_CHECK_VALUE(logits.dim() == 2, "sample_from_logits: logits must be [B, V], got shape ", logits.sizes());
  TORCH_CHECK_VALUE(logits.size(1) > 0, "sample_from_logits: logits has an empty vocabulary dimension");
  const auto st = logits.scalar_type();
  TORCH_CHECK_VALUE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf,
                    "sample_from_logits: logits must be float32, bfloat16 or float16, got ", st);
  const int64_t B = logits.size(0);
  struct PerRow {
    const char* name;
    const at::Tensor* t;
    bool integer;
  };
  const PerRow per_row[] = {{"temperature", &temperature, false}, {"top_k", &top_k, true},
                            {"top_p", &top_p, false},             {"min_p", &min_p, false},
                            {"seed", &seed, true}};
  for (const auto& [name, t, integer] : per_row) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == B, "sample_from_logits: ", name, " must have shape [", B,
                      "], got ", t->sizes());
    TORCH_CHECK_VALUE(t->device() == logits.device(), "sample_from_logits: ", name, " is on ", t->device(),
                      " but logits are on ", logits.device());
    const auto dt = t->scalar_type();
    if (integer) {
      TORCH_CHECK_VALUE(dt == at::kLong || dt == at::kInt, "sample_from_logits: ", name,
                        " must be an int64 (or int32) tensor, got ", dt);
    } else {
      TORCH_CHECK_VALUE(at::isFloatingType(dt), "sample_from_logits: ", name, " must be a floating-point tensor, got ",
                        dt);
    }
  }
  TORCH_CHECK_VALUE(offset >= 0, "sample_from_logits: offset must be >= 0, got ", offset);
  if (!check_ranges || B == 0 || logits.is_meta()) return;  // meta: shapes only, there are no values to check
  // Ranges (NaN fails every comparison, so it is caught with the rest). One sync when all are fine.
  const auto ok_t = temperature.isfinite().logical_and(temperature.ge(0));
  const auto ok_k = top_k.ge(0);
  const auto ok_p = top_p.gt(0).logical_and(top_p.le(1));
  const auto ok_m = min_p.ge(0).logical_and(min_p.le(1));
  if (at::stack({ok_t, ok_k, ok_p, ok_m}).all().item<bool>()) return;
  check_row_range("temperature", temperature, ok_t, "finite and >= 0");
  check_row_range("top_k", top_k, ok_k, ">= 0");
  check_row_range("top_p", top_p, ok_p, "in (0, 1]");
  check_row_range("min_p", min_p, ok_m, "in [0, 1]");
}

void check_sample_status(const at::Tensor& tokens) {
  // The kernels write a status in place of the token of a row they cannot sample (one sync).
  const auto bad = tokens.lt(0);
  const int64_t row = first_bad_row(bad.logical_not());
  if (row < 0) return;
  const int64_t status = tokens[row].item<int64_t>();
  const int64_t n_bad = bad.sum().item<int64_t>();
  TORCH_CHECK_VALUE(false, "sample_from_logits: logits row ", row, " ",
                    status == mstar::kStatusNonFinite ? "holds NaN or +inf" : "is all -inf (every token masked)", "; ",
                    n_bad, " bad row(s) in total");
}

std::tuple<at::Tensor, at::Tensor> sample_from_logits_cpu(const at::Tensor& logits, const at::Tensor& temperature,
                                                          const at::Tensor& top_k, const at::Tensor& top_p,
                                                          const at::Tensor& min_p, const at::Tensor& seed,
                                                          int64_t offset, bool return_logprobs, bool check) {
  check_sample_inputs(logits, temperature, top_k, top_p, min_p, seed, offset, check);
  TORCH_CHECK_VALUE(logits.device().is_cpu(), "sample_from_logits (cpu): logits must be on the CPU");
  const auto x = logits.contiguous();
  const int64_t B = x.size(0), V = x.size(1);
  const auto params = pack_sample_params(x, temperature, top_k, top_p, min_p, seed, offset);
  auto tokens = at::empty({B}, x.options().dtype(at::kLong));
  auto logprobs = at::empty({return_logprobs ? B : 0}, x.options().dtype(at::kFloat));
  int64_t* tok = tokens.data_ptr<int64_t>();
  float* lp = return_logprobs ? logprobs.data_ptr<float>() : nullptr;

  const int cap = mstar::cpu_level();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sample_from_logits_cpu", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, float, scalar_t>;  // double rejected above
    const T* src = reinterpret_cast<const T*>(x.data_ptr());
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      if (cap >= 2)
        mstar::cpu::AVX512::sample_from_logits_rows<T>(src, V, begin, end, params.data(), tok, lp);
      else if (cap >= 1)
        mstar::cpu::AVX2::sample_from_logits_rows<T>(src, V, begin, end, params.data(), tok, lp);
      else
        mstar::cpu::DEFAULT::sample_from_logits_rows<T>(src, V, begin, end, params.data(), tok, lp);
    });
  });
  if (check) check_sample_status(tokens);
  return {tokens, logprobs};
}

// Meta (fake) kernel: output shapes for tracing (torch.compile / export). It also makes a call that mixes a
// meta parameter into real logits end in the device check above instead of the dispatcher's "no kernel".
std::tuple<at::Tensor, at::Tensor> sample_from_logits_meta(const at::Tensor& logits, const at::Tensor& temperature,
                                                           const at::Tensor& top_k, const at::Tensor& top_p,
                                                           const at::Tensor& min_p, const at::Tensor& seed,
                                                           int64_t offset, bool return_logprobs, bool check) {
  check_sample_inputs(logits, temperature, top_k, top_p, min_p, seed, offset, check);
  const int64_t B = logits.size(0);
  return {at::empty({B}, logits.options().dtype(at::kLong)),
          at::empty({return_logprobs ? B : 0}, logits.options().dtype(at::kFloat))};
}

}  // namespace mstar_fast
