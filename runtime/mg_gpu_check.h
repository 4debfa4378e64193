/* mg_gpu_check: `moegen train SPEC --check-step`: one training step of the spec's model on the
 * CPU (the fp32/fp64 oracle, mg_cpu_model) and on the GPU (mg_gpu_model) from the same init
 * and the same batch; compares the loss, every parameter gradient (relative L2 per tensor,
 * max abs error), the grad norm and the updated weights, one row per tensor.
 *
 * Batch: grad_accum micro-batches of min(train.batch, 8) windows of seq_len + 1 tokens drawn
 * uniformly from [0, vocab) with mg_rng(train.seed): no data files needed (the GPU host may
 * not see the data directory). Dropout as in training (step 0).
 *
 * Bounds: loss rel <= 1e-2 (bf16/fp16) or 1e-4 (fp32); gradient rel L2 <= 2e-2 / 1e-4 per
 * tensor (tensors whose CPU gradient norm is below 1e-6·the global norm only report); grad
 * norm as the loss. The updated weights are reported (AdamW's first step is ±lr·sign(g), so
 * near-zero gradients flip; informative only).
 *
 * dump_dir (may be NULL) receives, for bench/torch_lm_step.py: model.safetensors (the init,
 * F32, HF names), batch.npy (int32 [A, B, T+1]), grads_cpu.safetensors,
 * grads_gpu.safetensors (when a GPU ran), config.json (the architecture + the step's
 * losses), spec.lua (canonical). Without a GPU the CPU half still runs and dumps, then
 * MG_EUSER "no CUDA device". */
#ifndef MG_GPU_CHECK_H
#define MG_GPU_CHECK_H

#include "mg_err.h"
#include "mg_spec.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

int mg_gpu_check_step(const mg_spec *spec, const char *dump_dir, FILE *out, int *n_fail, mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
