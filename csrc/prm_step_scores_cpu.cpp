// CPU launcher for mstar_fast::prm_step_scores: checks inputs (shared with the CUDA launcher), widens the
// 1 or 2 head rows (and bias) to fp32 once, and runs the step-tag rows in parallel with at::parallel_for
// through the kernel copy compiled for this CPU (AVX512 / AVX2 / DEFAULT):
// csrc/cpu/prm_step_scores_kernel.cpp. Only the S gathered rows of hidden are read.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "mstar/cpu_level.h"
#include "ops.h"

namespace mstar::cpu {
#define MSTAR_DECLARE_PRM_ROWS(CAP)                                                                         \
  namespace CAP {                                                                                           \
  template <typename scalar_t>                                                                              \
  void prm_step_scores_rows(const scalar_t*, int64_t, int64_t, const int64_t*, const float*, int, const float*, \
                            int64_t, int64_t, float*);                                                      \
  }
MSTAR_DECLARE_PRM_ROWS(DEFAULT)
MSTAR_DECLARE_PRM_ROWS(AVX2)
MSTAR_DECLARE_PRM_ROWS(AVX512)
#undef MSTAR_DECLARE_PRM_ROWS
}  // namespace mstar::cpu

namespace mstar_fast {

void check_prm_step_scores_inputs(const at::Tensor& hidden, const at::Tensor& positions, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "prm_step_scores";
  TORCH_CHECK_VALUE(hidden.dim() == 2, op, ": hidden must be 2-D [N, H], got shape ", hidden.sizes());
  const auto st = hidden.scalar_type();
  TORCH_CHECK_VALUE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op,
                    ": hidden must be float32, bfloat16 or float16, got ", st);
  TORCH_CHECK_VALUE(weight.dim() == 2 && (weight.size(0) == 1 || weight.size(0) == 2), op,
                    ": weight must be [2, H] (good and bad reward-token rows) or [1, H] (a value head), got shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(weight.size(1) == hidden.size(1), op, ": weight has ", weight.size(1),
                    " columns but hidden has H = ", hidden.size(1));
  TORCH_CHECK_VALUE(weight.scalar_type() == st, op, ": weight dtype ", weight.scalar_type(),
                    " does not match hidden dtype ", st);
  TORCH_CHECK_VALUE(positions.dim() == 1, op, ": positions must be 1-D [S], got shape ", positions.sizes());
  TORCH_CHECK_VALUE(positions.scalar_type() == at::kLong, op, ": positions must be int64, got ",
                    positions.scalar_type());
  check_same_device(op, hidden, "hidden", weight, "weight");
  check_same_device(op, hidden, "hidden", positions, "positions");
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must have shape [",
                      weight.size(0), "] to match weight, got ", bias->sizes());
    TORCH_CHECK_VALUE(bias->scalar_type() == st, op, ": bias dtype ", bias->scalar_type(),
                      " does not match hidden dtype ", st);
    check_same_device(op, hidden, "hidden", *bias, "bias");
  }
  if (positions.numel() > 0) {
    const int64_t lo = positions.min().item<int64_t>(), hi = positions.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < hidden.size(0), op, ": positions must index rows of hidden in [0, ",
                      hidden.size(0), "), got values in [", lo, ", ", hi, "]");
  }
}

at::Tensor prm_step_scores_cpu(const at::Tensor& hidden, const at::Tensor& positions, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias) {
  check_prm_step_scores_inputs(hidden, positions, weight, bias);
  TORCH_CHECK_VALUE(hidden.device().is_cpu(), "prm_step_scores (cpu): hidden must be on the CPU");
  const auto h = hidden.stride(1) == 1 ? hidden : hidden.contiguous();  // rows may be strided, columns not
  const auto pos = positions.contiguous();
  const auto w = weight.to(at::kFloat).contiguous();
  const auto b = bias.has_value() ? std::optional<at::Tensor>(bias->to(at::kFloat).contiguous()) : std::nullopt;
  const int64_t S = pos.size(0), H = h.size(1);
  const int C = static_cast<int>(w.size(0));
  auto out = at::empty({S}, h.options().dtype(at::kFloat));
  if (S == 0) return out;
  const int64_t* pp = pos.data_ptr<int64_t>();
  const float* wp = w.data_ptr<float>();
  const float* bp = b.has_value() ? b->data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t row_stride = h.stride(0);
  const int cap = mstar::cpu_level();
  // One row costs ~C * H multiply-adds: aim for ~64K of them per task.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, C * H));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "prm_step_scores_cpu", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, float, scalar_t>;  // double rejected above
    const T* hp = reinterpret_cast<const T*>(h.data_ptr());
    at::parallel_for(0, S, grain, [&](int64_t begin, int64_t end) {
      if (cap >= 2)
        mstar::cpu::AVX512::prm_step_scores_rows<T>(hp, row_stride, H, pp, wp, C, bp, begin, end, op);
      else if (cap >= 1)
        mstar::cpu::AVX2::prm_step_scores_rows<T>(hp, row_stride, H, pp, wp, C, bp, begin, end, op);
      else
        mstar::cpu::DEFAULT::prm_step_scores_rows<T>(hp, row_stride, H, pp, wp, C, bp, begin, end, op);
    });
  });
  return out;
}

}  // namespace mstar_fast
