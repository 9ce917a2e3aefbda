// CUDA launcher for mstar_fast::prm_step_scores (compiled only in a CUDA build): the input checks shared
// with the CPU launcher, then the torch-free kernel launcher (mstar/prm_step_scores_cuda.h,
// csrc/cuda/prm_step_scores_kernel.cu) on the current stream of hidden's device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_dtype.h"
#include "mstar/prm_step_scores_cuda.h"
#include "ops.h"

namespace mstar_fast {

at::Tensor prm_step_scores_cuda(const at::Tensor& hidden, const at::Tensor& positions, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias) {
  check_prm_step_scores_inputs(hidden, positions, weight, bias);
  TORCH_CHECK_VALUE(hidden.is_cuda(), "prm_step_scores (cuda): hidden must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(hidden.device());
  const auto h = hidden.stride(1) == 1 ? hidden : hidden.contiguous();
  const auto pos = positions.contiguous();
  const auto w = weight.contiguous();
  const auto b = bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  const int64_t S = pos.size(0);
  auto out = at::empty({S}, h.options().dtype(at::kFloat));
  if (S == 0) return out;
  const cudaError_t err = mstar::cuda::launch_prm_step_scores(
      h.data_ptr(), h.stride(0), h.size(0), h.size(1), kernel_dtype("prm_step_scores", h.scalar_type()),
      pos.data_ptr<int64_t>(), S, w.data_ptr(), static_cast<int>(w.size(0)), b.has_value() ? b->data_ptr() : nullptr,
      out.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_CHECK(err);
  return out;
}

}  // namespace mstar_fast
