// The one place that declares mstar_fast op schemas (TORCH_LIBRARY) and binds their CPU / CUDA
// implementations. Also the Python entry point of `mstar_fast._C`: importing it runs the registrations.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(mstar_fast, m) {
  // Per-row parameters arrive expanded to [B] tensors (the Python layer broadcasts scalars). check: validate
  // parameter ranges and raise for rows that cannot be sampled (reads values: host syncs on CUDA); without
  // it such rows come back as negative statuses and the call never syncs.
  m.def(
      "sample_from_logits(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, "
      "Tensor seed, int offset, bool return_logprobs, bool check=True) -> (Tensor, Tensor)");
  // P(good step) at the step-tag rows `positions` of hidden [N, H]; weight [2, H] (good, bad) or [1, H].
  m.def("prm_step_scores(Tensor hidden, Tensor positions, Tensor weight, Tensor? bias) -> Tensor");
  // reduce in {min, max, mean, sum, prod, last}; offsets [R + 1] int64; empty segment -> NaN.
  m.def("segment_reduce(Tensor values, Tensor offsets, str reduce) -> Tensor");
  // Per group, the k best valid rows (NaN lowest, ties to the lower index) as a bool mask [L].
  m.def("group_topk(Tensor scores, Tensor group_offsets, int k, Tensor? valid) -> Tensor");
}

TORCH_LIBRARY_IMPL(mstar_fast, CPU, m) {
  m.impl("sample_from_logits", &mstar_fast::sample_from_logits_cpu);
  m.impl("prm_step_scores", &mstar_fast::prm_step_scores_cpu);
  m.impl("segment_reduce", &mstar_fast::segment_reduce_cpu);
  m.impl("group_topk", &mstar_fast::group_topk_cpu);
}

// Output shapes only (tracing); it also turns a meta parameter next to real logits into a clear device error.
TORCH_LIBRARY_IMPL(mstar_fast, Meta, m) { m.impl("sample_from_logits", &mstar_fast::sample_from_logits_meta); }

#ifdef MSTAR_WITH_CUDA
TORCH_LIBRARY_IMPL(mstar_fast, CUDA, m) {
  m.impl("sample_from_logits", &mstar_fast::sample_from_logits_cuda);
  m.impl("prm_step_scores", &mstar_fast::prm_step_scores_cuda);
  m.impl("segment_reduce", &mstar_fast::segment_reduce_cuda);
  m.impl("group_topk", &mstar_fast::group_topk_cuda);
}
#endif

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "mstar_fast compiled ops (registered with torch.ops)",
                               -1, nullptr};
  PyObject* mod = PyModule_Create(&module);
  if (mod) {
#ifdef MSTAR_WITH_CUDA
    PyModule_AddIntConstant(mod, "with_cuda", 1);
#else
    PyModule_AddIntConstant(mod, "with_cuda", 0);
#endif
  }
  return mod;
}
