// CUDA launcher for mstar_fast::segment_reduce (compiled only in a CUDA build): the input checks shared
// with the CPU launcher (the offsets check reads them back: one sync), then the torch-free kernel
// launcher (mstar/segment_reduce_cuda.h, csrc/cuda/segment_reduce_kernel.cu) on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_dtype.h"
#include "mstar/segment_reduce_cuda.h"
#include "ops.h"

namespace mstar_fast {

at::Tensor segment_reduce_cuda(const at::Tensor& values, const at::Tensor& offsets, const std::string& reduce) {
  const mstar::Reduce red = parse_reduce(reduce);
  check_segment_reduce_inputs(values, offsets);
  TORCH_CHECK_VALUE(values.is_cuda(), "segment_reduce (cuda): values must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(values.device());
  const auto v = values.contiguous();
  const auto o = offsets.contiguous();
  const int64_t R = o.size(0) - 1;
  auto out = at::empty({R}, v.options());
  if (R == 0) return out;
  const cudaError_t err =
      mstar::cuda::launch_segment_reduce(v.data_ptr(), kernel_dtype("segment_reduce", v.scalar_type()),
                                         o.data_ptr<int64_t>(), R, red, out.data_ptr(),
                                         c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_CHECK(err);
  return out;
}

}  // namespace mstar_fast
