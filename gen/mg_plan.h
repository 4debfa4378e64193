/* mg_plan: what the generator will emit for a spec: kernel families, their procedural
 * names, tile configurations (chosen by rules from the dims) and the spec constants. */
#ifndef MG_PLAN_H
#define MG_PLAN_H

#include "mg_spec.h"
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MG_FAM_ROUTER = 0,   /* templates/moe_router.cu   : logits GEMM + softmax/sigmoid + top-k + stats */
    MG_FAM_DISPATCH,     /* templates/moe_dispatch.cu : count, scan, stable permutation, capacity */
    MG_FAM_UP,           /* templates/moe_up.cu       : gathered grouped GEMM x·W_upᵀ + activation (+ bwd) */
    MG_FAM_DOWN,         /* templates/moe_down.cu     : grouped GEMM h·W_dnᵀ (+ bwd with act-grad) */
    MG_FAM_COMBINE,      /* templates/moe_combine.cu  : weighted combine, its backward, dx gather */
    MG_FAM_ATTN,         /* templates/lm_attn.cu      : causal GQA flash attention (+ FA2 bwd) */
    MG_FAM_ROPE,         /* templates/lm_rope.cu      : rotary embedding of q, k in place (+ bwd) */
    MG_FAM_NORM,         /* templates/lm_norm.cu      : RMSNorm, residual add fused (+ bwd, dw) */
    MG_FAM_EMBED,        /* templates/lm_embed.cu     : embedding gather, deterministic scatter-add */
    MG_FAM_XENT,         /* templates/lm_xent.cu      : softmax cross-entropy, dlogits in place */
    MG_FAM_DROPOUT,      /* templates/lm_dropout.cu   : counter-based dropout + residual add (+ bwd) */
    MG_FAM_ADAMW,        /* templates/lm_adamw.cu     : AdamW step on fp32 masters + compute copy */
    MG_FAM_UTIL,         /* templates/lm_util.cu      : cast, grad-norm partials and total, scale */
    MG_FAM_COUNT
} mg_family_id;

/* Families [0, MG_FAM_MOE_COUNT) make the MoE layer (mg_moe, mg_launch); the rest, from
 * MG_FAM_ATTN on, are the decoder LM's other kernels (runtime/mg_lm.h). */
#define MG_FAM_MOE_COUNT ((int)MG_FAM_ATTN)

extern const char *const mg_family_names[MG_FAM_COUNT];      /* "router", ... */
extern const char *const mg_family_templates[MG_FAM_COUNT];  /* "moe_router.cu", ... */

/* A kernel configuration: the tile and pipeline knobs the templates specialize on. */
typedef struct mg_tile {
    int bm, bn, bk;     /* CTA tile */
    int stages;         /* shared-memory pipeline depth */
    int warps;          /* warps per CTA */
} mg_tile;

#define MG_MAX_ENTRIES 8
typedef struct mg_family {
    mg_family_id id;
    char name[160];                     /* procedural name, e.g. moe_up_swiglu_bf16_e8_k2_d512_f1024_t128x64x32_s3 */
    mg_tile tile;                       /* zero for families without a tile */
    int n_entries;                      /* filled from the template's "// moegen:entries" line */
    char entries[MG_MAX_ENTRIES][32];   /* entry suffixes, e.g. "fwd" */
} mg_family;

typedef struct mg_plan {
    mg_spec spec;
    mg_derived derived;
    char spec_hash[65];
    int n_families;
    mg_family fam[MG_FAM_COUNT];
} mg_plan;

/* Builds the plan; spec must be validated. Tiles come from the rules in mg_plan.c unless
 * `tiles` (indexed by family id, bm == 0 = rule) overrides them. */
int mg_plan_make(const mg_spec *spec, const mg_tile *tiles, mg_plan *plan, mg_err *err);

/* Entry point symbol: "<family name>_<entry>" into buf. */
void mg_plan_entry_symbol(const mg_family *f, int entry, char *buf, size_t n);
/* Index of an entry by suffix, or -1. */
int mg_family_entry_index(const mg_family *f, const char *suffix);

/* Prints the human-readable plan (moegen check). */
void mg_plan_print(const mg_plan *plan, void *file /* FILE* */);

#ifdef __cplusplus
}
#endif
#endif
