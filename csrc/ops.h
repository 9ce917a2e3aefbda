// Declarations of the torch-facing launchers bound in registration.cpp.
#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

#include "mstar/sample_from_logits.h"

namespace mstar_fast {

void check_sample_inputs(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                         const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& seed, int64_t offset);
std::vector<mstar::SampleRowParams> pack_sample_params(const at::Tensor& logits, const at::Tensor& temperature,
                                                       const at::Tensor& top_k, const at::Tensor& top_p,
                                                       const at::Tensor& min_p, const at::Tensor& seed,
                                                       int64_t offset);

std::tuple<at::Tensor, at::Tensor> sample_from_logits_cpu(const at::Tensor& logits, const at::Tensor& temperature,
                                                          const at::Tensor& top_k, const at::Tensor& top_p,
                                                          const at::Tensor& min_p, const at::Tensor& seed,
                                                          int64_t offset, bool return_logprobs);
#ifdef MSTAR_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> sample_from_logits_cuda(const at::Tensor& logits, const at::Tensor& temperature,
                                                           const at::Tensor& top_k, const at::Tensor& top_p,
                                                           const at::Tensor& min_p, const at::Tensor& seed,
                                                           int64_t offset, bool return_logprobs);
#endif

}  // namespace mstar_fast
