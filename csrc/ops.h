// Declarations of the torch-facing launchers bound in registration.cpp.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "mstar/sample_from_logits.h"
#include "mstar/segment_reduce.h"

namespace mstar_fast {

// sample_from_logits: the checks of the Python layer (shapes, dtypes, devices; with check_ranges also the
// ranges, which reads the per-row parameters: one sync for CUDA tensors), and the row status the kernels
// write (NaN / +inf / all -inf rows).
void check_sample_inputs(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                         const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& seed, int64_t offset,
                         bool check_ranges);
void check_sample_status(const at::Tensor& tokens);
std::vector<mstar::SampleRowParams> pack_sample_params(const at::Tensor& logits, const at::Tensor& temperature,
                                                       const at::Tensor& top_k, const at::Tensor& top_p,
                                                       const at::Tensor& min_p, const at::Tensor& seed,
                                                       int64_t offset);

std::tuple<at::Tensor, at::Tensor> sample_from_logits_cpu(const at::Tensor& logits, const at::Tensor& temperature,
                                                          const at::Tensor& top_k, const at::Tensor& top_p,
                                                          const at::Tensor& min_p, const at::Tensor& seed,
                                                          int64_t offset, bool return_logprobs, bool check);
std::tuple<at::Tensor, at::Tensor> sample_from_logits_meta(const at::Tensor& logits, const at::Tensor& temperature,
                                                           const at::Tensor& top_k, const at::Tensor& top_p,
                                                           const at::Tensor& min_p, const at::Tensor& seed,
                                                           int64_t offset, bool return_logprobs, bool check);
#ifdef MSTAR_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> sample_from_logits_cuda(const at::Tensor& logits, const at::Tensor& temperature,
                                                           const at::Tensor& top_k, const at::Tensor& top_p,
                                                           const at::Tensor& min_p, const at::Tensor& seed,
                                                           int64_t offset, bool return_logprobs, bool check);
#endif

// Shared input checks (csrc/checks.cpp); each raises ValueError (TORCH_CHECK_VALUE) naming the problem.
// offsets: 1-D int64 [R + 1], offsets[0] == 0, non-decreasing, offsets[R] == length; reads the values
// (a device sync for CUDA tensors).
void check_offsets(const char* op, const char* name, const at::Tensor& offsets, int64_t length);
void check_same_device(const char* op, const at::Tensor& a, const char* a_name, const at::Tensor& b,
                       const char* b_name);

// prm_step_scores: hidden [N, H], positions [S] int64, weight [1 | 2, H], bias [1 | 2] or none -> fp32 [S].
void check_prm_step_scores_inputs(const at::Tensor& hidden, const at::Tensor& positions, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias);
at::Tensor prm_step_scores_cpu(const at::Tensor& hidden, const at::Tensor& positions, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias);

// segment_reduce: values [L] (floating), offsets [R + 1] int64, reduce name -> [R] in values' dtype.
mstar::Reduce parse_reduce(const std::string& reduce);
void check_segment_reduce_inputs(const at::Tensor& values, const at::Tensor& offsets);
at::Tensor segment_reduce_cpu(const at::Tensor& values, const at::Tensor& offsets, const std::string& reduce);

// group_topk: scores [L] (floating), group_offsets [G + 1] int64, k >= 0, valid [L] bool or none -> bool [L].
void check_group_topk_inputs(const at::Tensor& scores, const at::Tensor& group_offsets, int64_t k,
                             const std::optional<at::Tensor>& valid);
at::Tensor group_topk_cpu(const at::Tensor& scores, const at::Tensor& group_offsets, int64_t k,
                          const std::optional<at::Tensor>& valid);

#ifdef MSTAR_WITH_CUDA
at::Tensor prm_step_scores_cuda(const at::Tensor& hidden, const at::Tensor& positions, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias);
at::Tensor segment_reduce_cuda(const at::Tensor& values, const at::Tensor& offsets, const std::string& reduce);
at::Tensor group_topk_cuda(const at::Tensor& scores, const at::Tensor& group_offsets, int64_t k,
                           const std::optional<at::Tensor>& valid);
#endif

}  // namespace mstar_fast
