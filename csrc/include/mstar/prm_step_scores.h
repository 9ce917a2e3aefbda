// Shared contract of the prm_step_scores kernels (CPU, CUDA; Triton and the torch reference mirror it):
// for a step-tag row h of the PRM's final hidden states and head rows w (+ bias b), logits are
// l_c = <h, w_c> + b_c accumulated in fp32. Two rows (good, bad reward tokens): P(good) = softmax(l)[0]
// = 1 / (1 + exp(l_bad - l_good)); one row (value head): sigmoid(l_0) = 1 / (1 + exp(-l_0)).
// Torch-free; compiles for host and device.
#pragma once
#include <math.h>

#include "mstar/hd.h"

namespace mstar {

// P(good step) from the (one or two) head logits; num_heads is 1 or 2. Overflow of exp gives 0 or 1
// exactly, never NaN, unless a logit is NaN or both are infinite with the same sign.
MSTAR_HD float step_prob(float l_good, float l_bad, int num_heads) {
  const float d = num_heads == 2 ? l_bad - l_good : -l_good;
  return 1.0f / (1.0f + expf(d));
}

}  // namespace mstar
