// CUDA launcher for mstar_fast::sample_from_logits: checks inputs (with check=false only what needs no values:
// no host sync at all), packs the per-row parameters on the device, and launches the torch-free kernel of
// csrc/cuda/sample_from_logits_kernel.cu on the current stream. Compiled only against a CUDA build of torch
// (MSTAR_WITH_CUDA).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "mstar/sample_from_logits.h"
#include "mstar/sample_from_logits_cuda.h"
#include "ops.h"

namespace mstar_fast {

std::tuple<at::Tensor, at::Tensor> sample_from_logits_cuda(const at::Tensor& logits, const at::Tensor& temperature,
                                                           const at::Tensor& top_k, const at::Tensor& top_p,
                                                           const at::Tensor& min_p, const at::Tensor& seed,
                                                           int64_t offset, bool return_logprobs, bool check) {
  check_sample_inputs(logits, temperature, top_k, top_p, min_p, seed, offset, check);
  TORCH_CHECK_VALUE(logits.is_cuda(), "sample_from_logits (cuda): logits must be a CUDA tensor, got ",
                    logits.device());
  TORCH_CHECK_VALUE(logits.size(1) <= mstar::cuda::kSampleMaxVocab, "sample_from_logits (cuda): at most ",
                    mstar::cuda::kSampleMaxVocab, " logits per row, got ", logits.size(1));
  TORCH_CHECK_VALUE(logits.size(0) <= std::numeric_limits<int32_t>::max(),
                    "sample_from_logits (cuda): at most 2^31 - 1 rows, got ", logits.size(0));
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto x = logits.contiguous();
  const int64_t B = x.size(0), V = x.size(1);
  auto tokens = at::empty({B}, x.options().dtype(at::kLong));
  auto logprobs = at::empty({return_logprobs ? B : 0}, x.options().dtype(at::kFloat));
  if (B == 0) return {tokens, logprobs};

  int dtype = -1;
  switch (x.scalar_type()) {
    case at::kFloat: dtype = mstar::cuda::kSampleF32; break;
    case at::kBFloat16: dtype = mstar::cuda::kSampleBF16; break;
    case at::kHalf: dtype = mstar::cuda::kSampleF16; break;
    default: TORCH_CHECK_VALUE(false, "sample_from_logits (cuda): unsupported logits dtype ", x.scalar_type());
  }
  // Per-row parameters as contiguous device arrays (no-ops for what the Python layer passes), packed into
  // SampleRowParams on the device.
  const auto dev = x.device();
  const auto t = temperature.to(dev, at::kFloat).contiguous();
  const auto k = top_k.to(dev, at::kLong).contiguous();
  const auto tp = top_p.to(dev, at::kFloat).contiguous();
  const auto mp = min_p.to(dev, at::kFloat).contiguous();
  const auto sd = seed.to(dev, at::kLong).contiguous();
  auto packed = at::empty({B * static_cast<int64_t>(sizeof(mstar::SampleRowParams))}, x.options().dtype(at::kByte));
  auto* params = reinterpret_cast<mstar::SampleRowParams*>(packed.data_ptr<uint8_t>());

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();  // of dev: the guard made it current
  cudaError_t err = mstar::cuda::launch_pack_sample_params(
      t.data_ptr<float>(), k.data_ptr<int64_t>(), tp.data_ptr<float>(), mp.data_ptr<float>(), sd.data_ptr<int64_t>(),
      static_cast<uint64_t>(offset), B, params, stream);
  TORCH_CHECK(err == cudaSuccess, "sample_from_logits (cuda): parameter packing kernel failed to launch: ",
              cudaGetErrorString(err));
  err = mstar::cuda::launch_sample_from_logits(x.data_ptr(), dtype, B, V, params, tokens.data_ptr<int64_t>(),
                                               return_logprobs ? logprobs.data_ptr<float>() : nullptr, stream);
  TORCH_CHECK(err == cudaSuccess, "sample_from_logits (cuda): kernel launch failed for logits of shape [", B, ", ",
              V, "] (", x.scalar_type(), "): ", cudaGetErrorString(err));
  if (check) check_sample_status(tokens);  // one host sync; without check the statuses stay in tokens
  // `packed` and the converted parameters are freed here; the caching allocator keeps their memory for this
  // stream's queued work, so the kernels still read valid data.
  return {tokens, logprobs};
}

}  // namespace mstar_fast
