// CPU launcher and kernel for mstar_fast::segment_reduce: out[r] = reduce(values[offsets[r]:offsets[r+1]])
// for min / max / mean / sum / prod / last, accumulated in fp32 (fp64 for fp64 values); empty segments
// give NaN, min / max propagate NaN (mstar/segment_reduce.h). Segments run in parallel with
// at::parallel_for; within a segment the loop is scalar, since PRM segments are a few dozen steps.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "mstar/segment_reduce.h"
#include "ops.h"

namespace mstar_fast {

mstar::Reduce parse_reduce(const std::string& reduce) {
  if (reduce == "min") return mstar::Reduce::kMin;
  if (reduce == "max") return mstar::Reduce::kMax;
  if (reduce == "mean") return mstar::Reduce::kMean;
  if (reduce == "sum") return mstar::Reduce::kSum;
  if (reduce == "prod") return mstar::Reduce::kProd;
  if (reduce == "last") return mstar::Reduce::kLast;
  TORCH_CHECK_VALUE(false, "segment_reduce: reduce must be one of min, max, mean, sum, prod, last; got '", reduce,
                    "'");
}

void check_segment_reduce_inputs(const at::Tensor& values, const at::Tensor& offsets) {
  constexpr const char* op = "segment_reduce";
  TORCH_CHECK_VALUE(values.dim() == 1, op, ": values must be 1-D [L], got shape ", values.sizes());
  const auto st = values.scalar_type();
  TORCH_CHECK_VALUE(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, op,
                    ": values must be float32, float64, bfloat16 or float16, got ", st);
  check_same_device(op, values, "values", offsets, "offsets");
  check_offsets(op, "offsets", offsets, values.size(0));
}

at::Tensor segment_reduce_cpu(const at::Tensor& values, const at::Tensor& offsets, const std::string& reduce) {
  const mstar::Reduce red = parse_reduce(reduce);
  check_segment_reduce_inputs(values, offsets);
  TORCH_CHECK_VALUE(values.device().is_cpu(), "segment_reduce (cpu): values must be on the CPU");
  const auto v = values.contiguous();
  const auto o = offsets.contiguous();
  const int64_t R = o.size(0) - 1;
  auto out = at::empty({R}, v.options());
  if (R == 0) return out;
  const int64_t* op = o.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, v.scalar_type(), "segment_reduce_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* outp = out.data_ptr<scalar_t>();
    at::parallel_for(0, R, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = op[r], e = op[r + 1];
        if (e <= b) {
          outp[r] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
        } else if (red == mstar::Reduce::kLast) {
          outp[r] = vp[e - 1];
        } else {
          acc_t acc = mstar::reduce_identity<acc_t>(red);
          for (int64_t i = b; i < e; ++i) acc = mstar::reduce_combine<acc_t>(red, acc, static_cast<acc_t>(vp[i]));
          outp[r] = static_cast<scalar_t>(mstar::reduce_finish<acc_t>(red, acc, e - b));
        }
      }
    });
  });
  return out;
}

}  // namespace mstar_fast
