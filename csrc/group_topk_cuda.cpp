// CUDA launcher for mstar_fast::group_topk (compiled only in a CUDA build): the input checks shared with
// the CPU launcher (the offsets check reads them back: one sync), then the torch-free kernel launcher
// (mstar/group_topk_cuda.h, csrc/cuda/group_topk_kernel.cu) on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_dtype.h"
#include "mstar/group_topk_cuda.h"
#include "ops.h"

namespace mstar_fast {

at::Tensor group_topk_cuda(const at::Tensor& scores, const at::Tensor& group_offsets, int64_t k,
                           const std::optional<at::Tensor>& valid) {
  check_group_topk_inputs(scores, group_offsets, k, valid);
  TORCH_CHECK_VALUE(scores.is_cuda(), "group_topk (cuda): scores must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(scores.device());
  const auto s = scores.contiguous();
  const auto o = group_offsets.contiguous();
  const auto v = valid.has_value() ? std::optional<at::Tensor>(valid->contiguous()) : std::nullopt;
  const int64_t L = s.size(0), G = o.size(0) - 1;
  auto out = at::empty({L}, s.options().dtype(at::kBool));
  if (L == 0) return out;
  const cudaError_t err = mstar::cuda::launch_group_topk(
      s.data_ptr(), kernel_dtype("group_topk", s.scalar_type()), o.data_ptr<int64_t>(), G, L,
      v.has_value() ? v->data_ptr<bool>() : nullptr, k, out.data_ptr<bool>(), c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_CHECK(err);
  return out;
}

}  // namespace mstar_fast
