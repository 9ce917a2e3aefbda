// The one place that declares mstar_fast op schemas (TORCH_LIBRARY) and binds their CPU / CUDA
// implementations. Also the Python entry point of `mstar_fast._C`: importing it runs the registrations.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(mstar_fast, m) {
  // Per-row parameters arrive expanded to [B] tensors (the Python layer broadcasts scalars).
  m.def(
      "sample_from_logits(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, "
      "Tensor seed, int offset, bool return_logprobs) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mstar_fast, CPU, m) {
  m.impl("sample_from_logits", &mstar_fast::sample_from_logits_cpu);
}

#ifdef MSTAR_WITH_CUDA
TORCH_LIBRARY_IMPL(mstar_fast, CUDA, m) {
  m.impl("sample_from_logits", &mstar_fast::sample_from_logits_cuda);
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
