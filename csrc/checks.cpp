// Input checks shared by the CPU and CUDA launchers of the segment ops (declared in ops.h). Each failure
// is TORCH_CHECK_VALUE, which Python sees as ValueError, and names the op, the argument and the problem.
#include <ATen/ATen.h>

#include "ops.h"

namespace mstar_fast {

void check_same_device(const char* op, const at::Tensor& a, const char* a_name, const at::Tensor& b,
                       const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", b_name, " is on ", b.device(), " but ", a_name, " is on ",
                    a.device());
}

void check_offsets(const char* op, const char* name, const at::Tensor& offsets, int64_t length) {
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) >= 1, op, ": ", name,
                    " must be a 1-D tensor [R + 1] with R >= 0, got shape ", offsets.sizes());
  TORCH_CHECK_VALUE(offsets.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
                    offsets.scalar_type());
  const auto o = offsets.to(at::kCPU).contiguous();
  const int64_t* p = o.data_ptr<int64_t>();
  const int64_t n = o.size(0);
  TORCH_CHECK_VALUE(p[0] == 0, op, ": ", name, "[0] must be 0, got ", p[0]);
  for (int64_t i = 1; i < n; ++i)
    TORCH_CHECK_VALUE(p[i] >= p[i - 1], op, ": ", name, " must be non-decreasing, but ", name, "[", i, "] = ", p[i],
                      " < ", name, "[", i - 1, "] = ", p[i - 1]);
  TORCH_CHECK_VALUE(p[n - 1] == length, op, ": ", name, " must end at the number of values (", length, "), but ",
                    name, "[", n - 1, "] = ", p[n - 1]);
}

}  // namespace mstar_fast
