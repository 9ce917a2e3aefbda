// Widest x86 instruction set this CPU runs, for picking the kernel copy compiled per CPU_CAPABILITY:
// 2 = AVX512 (f, bw, vl, dq), 1 = AVX2 + FMA, 0 = DEFAULT. ATen's own get_cpu_capability is not
// exported from libtorch, so launchers ask the CPU directly (once; the answer is cached).
// Torch-free, header-only, host code only.
#pragma once

namespace mstar {

inline int cpu_level() {
  static const int level = [] {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
  }();
  return level;
}

}  // namespace mstar
