// CPU launcher and kernel for mstar_fast::group_topk: within each group, mark the k best valid rows
// (highest score first, NaN last, ties to the lower index: mstar/group_topk.h). Per group, the valid rows'
// indices are collected and, when more than k, partitioned with std::nth_element under that total order:
// O(n) per group. Groups run in parallel with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "mstar/group_topk.h"
#include "ops.h"

namespace mstar_fast {

void check_group_topk_inputs(const at::Tensor& scores, const at::Tensor& group_offsets, int64_t k,
                             const std::optional<at::Tensor>& valid) {
  constexpr const char* op = "group_topk";
  TORCH_CHECK_VALUE(scores.dim() == 1, op, ": scores must be 1-D [L], got shape ", scores.sizes());
  const auto st = scores.scalar_type();
  TORCH_CHECK_VALUE(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, op,
                    ": scores must be float32, float64, bfloat16 or float16, got ", st);
  TORCH_CHECK_VALUE(k >= 0, op, ": k must be >= 0, got ", k);
  check_same_device(op, scores, "scores", group_offsets, "group_offsets");
  if (valid.has_value()) {
    TORCH_CHECK_VALUE(valid->dim() == 1 && valid->size(0) == scores.size(0), op, ": valid must have shape [",
                      scores.size(0), "] like scores, got ", valid->sizes());
    TORCH_CHECK_VALUE(valid->scalar_type() == at::kBool, op, ": valid must be bool, got ", valid->scalar_type());
    check_same_device(op, scores, "scores", *valid, "valid");
  }
  check_offsets(op, "group_offsets", group_offsets, scores.size(0));
}

at::Tensor group_topk_cpu(const at::Tensor& scores, const at::Tensor& group_offsets, int64_t k,
                          const std::optional<at::Tensor>& valid) {
  check_group_topk_inputs(scores, group_offsets, k, valid);
  TORCH_CHECK_VALUE(scores.device().is_cpu(), "group_topk (cpu): scores must be on the CPU");
  const auto s = scores.contiguous();
  const auto o = group_offsets.contiguous();
  const auto v = valid.has_value() ? std::optional<at::Tensor>(valid->contiguous()) : std::nullopt;
  const int64_t G = o.size(0) - 1;
  auto out = at::zeros({s.size(0)}, s.options().dtype(at::kBool));
  if (G == 0 || k == 0) return out;
  const int64_t* op = o.data_ptr<int64_t>();
  const bool* vp = v.has_value() ? v->data_ptr<bool>() : nullptr;
  bool* outp = out.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, s.scalar_type(), "group_topk_cpu", [&] {
    using key_t = at::opmath_type<scalar_t>;  // bf16 / fp16 widen to fp32 exactly
    const scalar_t* sp = s.data_ptr<scalar_t>();
    at::parallel_for(0, G, 64, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> rows;
      for (int64_t g = begin; g < end; ++g) {
        rows.clear();
        for (int64_t i = op[g]; i < op[g + 1]; ++i)
          if (vp == nullptr || vp[i]) rows.push_back(i);
        if (static_cast<int64_t>(rows.size()) > k) {
          std::nth_element(rows.begin(), rows.begin() + (k - 1), rows.end(), [&](int64_t a, int64_t b) {
            return mstar::ranks_before<key_t>(static_cast<key_t>(sp[a]), a, static_cast<key_t>(sp[b]), b);
          });
          rows.resize(static_cast<size_t>(k));
        }
        for (const int64_t i : rows) outp[i] = true;
      }
    });
  });
  return out;
}

}  // namespace mstar_fast
