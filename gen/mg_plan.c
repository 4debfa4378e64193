/* mg_plan: kernel families, procedural names and tile rules for a validated spec. */
#include "mg_plan.h"
#include "mg_tmpl.h"
#include "lm_params.h"   /* LM_ATTN_BQ, LM_ATTN_BKV: the attention tile, named in the family name */

#include <stdio.h>
#include <string.h>

const char *const mg_family_names[MG_FAM_COUNT] = {"router", "dispatch", "up", "down", "combine",
                                                   "attn", "rope", "norm", "embed", "xent", "dropout", "adamw", "util"};
const char *const mg_family_templates[MG_FAM_COUNT] = {
    "moe_router.cu", "moe_dispatch.cu", "moe_up.cu", "moe_down.cu", "moe_combine.cu",
    "lm_attn.cu", "lm_rope.cu", "lm_norm.cu", "lm_embed.cu", "lm_xent.cu", "lm_dropout.cu", "lm_adamw.cu", "lm_util.cu"};

static int fam_has_tile(mg_family_id id) { return id == MG_FAM_UP || id == MG_FAM_DOWN; }

/* The rule-based default tile of a grouped GEMM with n output columns. Wide tiles feed the
 * tensor cores best; a narrow N wastes half a 128-wide tile, so it drops to 64. */
static mg_tile tile_rule(const mg_spec *s, int n)
{
    if (s->dtype == MG_DTYPE_FP32) return (mg_tile){64, 64, 16, 2, 4};
    mg_tile t = {128, 128, 32, 3, 8};
    if (n <= 64 || s->model.d_model <= 256) t.bn = 64;
    return t;
}

static void family_name(const mg_spec *s, mg_family *f)
{
    const char *dt = mg_dtype_names[s->dtype];
    const char *act = mg_act_names[s->moe.activation];
    int E = s->moe.experts, k = s->moe.top_k, d = s->model.d_model, ff = s->moe.d_ff;
    char tile[64] = "";
    if (fam_has_tile(f->id))
        snprintf(tile, sizeof tile, "_t%dx%dx%d_s%d", f->tile.bm, f->tile.bn, f->tile.bk, f->tile.stages);
    switch (f->id) {
    case MG_FAM_ROUTER:
        snprintf(f->name, sizeof f->name, "moe_router_%s%s_%s_e%d_k%d_d%d", mg_router_names[s->moe.router],
                 s->moe.renormalize && s->moe.router != MG_ROUTER_SWITCH ? "_rn" : "", dt, E, k, d);
        break;
    case MG_FAM_DISPATCH:
        snprintf(f->name, sizeof f->name, "moe_dispatch_%s_e%d_k%d",
                 s->moe.capacity_factor <= 0 ? "dropless"
                 : s->moe.drop_policy == MG_DROP_PROBABILITY ? "capprob" : "cap", E, k);
        break;
    case MG_FAM_UP:
        snprintf(f->name, sizeof f->name, "moe_up_%s_%s_e%d_k%d_d%d_f%d%s", act, dt, E, k, d, ff, tile);
        break;
    case MG_FAM_DOWN:
        snprintf(f->name, sizeof f->name, "moe_down_%s_%s_e%d_k%d_d%d_f%d%s", act, dt, E, k, d, ff, tile);
        break;
    case MG_FAM_COMBINE:
        snprintf(f->name, sizeof f->name, "moe_combine_%s_k%d_d%d%s", dt, k, d,
                 s->moe.shared_experts ? "_shared" : "");
        break;
    case MG_FAM_ATTN:
        snprintf(f->name, sizeof f->name, "lm_attn_%s_h%d_kv%d_d%d_causal_q%dk%d", dt, s->model.n_head,
                 s->model.n_kv_head, d / s->model.n_head, LM_ATTN_BQ, LM_ATTN_BKV(d / s->model.n_head));
        break;
    case MG_FAM_ROPE:
        snprintf(f->name, sizeof f->name, "lm_rope_%s_h%d_kv%d_d%d", dt, s->model.n_head, s->model.n_kv_head,
                 d / s->model.n_head);
        break;
    case MG_FAM_NORM: snprintf(f->name, sizeof f->name, "lm_rmsnorm_%s_d%d", dt, d); break;
    case MG_FAM_EMBED: snprintf(f->name, sizeof f->name, "lm_embed_%s_v%d_d%d", dt, s->model.vocab, d); break;
    case MG_FAM_XENT: snprintf(f->name, sizeof f->name, "lm_xent_%s_v%d", dt, s->model.vocab); break;
    case MG_FAM_DROPOUT: snprintf(f->name, sizeof f->name, "lm_dropout_%s", dt); break;
    case MG_FAM_ADAMW: snprintf(f->name, sizeof f->name, "lm_adamw_%s", dt); break;
    case MG_FAM_UTIL: snprintf(f->name, sizeof f->name, "lm_util_%s", dt); break;
    default: break;
    }
}

static int read_entries(mg_family *f, mg_err *err)
{
    size_t len;
    const char *name = mg_family_templates[f->id];
    const char *text = mg_tmpl_get(name, &len);
    if (!text) return mg_err_set(err, MG_EINTERNAL, "template %s is not embedded in this build", name);
    int n = mg_tmpl_directive(name, text, len, "entries", f->entries, MG_MAX_ENTRIES, err);
    if (n < 0) return err->code;
    if (n == 0) return mg_err_set(err, MG_EUSER, "templates/%s: missing '// moegen:entries ...' line", name);
    f->n_entries = n;
    return MG_OK;
}

int mg_plan_make(const mg_spec *spec, const mg_tile *tiles, mg_plan *plan, mg_err *err)
{
    memset(plan, 0, sizeof *plan);
    plan->spec = *spec;
    mg_spec_derive(spec, &plan->derived);
    mg_spec_hash(spec, plan->spec_hash);
    int F2 = spec->moe.d_ff * (mg_act_is_glu(spec->moe.activation) ? 2 : 1);
    for (int i = 0; i < MG_FAM_COUNT; i++) {
        mg_family *f = &plan->fam[i];
        f->id = (mg_family_id)i;
        if (fam_has_tile(f->id)) {
            int n = f->id == MG_FAM_UP ? F2 : spec->model.d_model;
            f->tile = (tiles && tiles[i].bm) ? tiles[i] : tile_rule(spec, n);
        }
        family_name(spec, f);
        int rc = read_entries(f, err);
        if (rc) return rc;
    }
    plan->n_families = MG_FAM_COUNT;
    return MG_OK;
}

void mg_plan_entry_symbol(const mg_family *f, int entry, char *buf, size_t n)
{
    snprintf(buf, n, "%s_%s", f->name, f->entries[entry]);
}

int mg_family_entry_index(const mg_family *f, const char *suffix)
{
    for (int i = 0; i < f->n_entries; i++)
        if (!strcmp(f->entries[i], suffix)) return i;
    return -1;
}

static void print_big(FILE *o, const char *label, double v, const char *unit)
{
    const char *sfx[] = {"", "K", "M", "G", "T", "P"};
    int i = 0;
    while (v >= 1000 && i < 5) v /= 1000, i++;
    fprintf(o, "  %-28s %8.2f %s%s\n", label, v, sfx[i], unit);
}

static void print_bytes(FILE *o, const char *label, double b)
{
    fprintf(o, "  %-28s %8.2f GiB\n", label, b / (1024.0 * 1024.0 * 1024.0));
}

void mg_plan_print(const mg_plan *plan, void *file)
{
    FILE *o = file;
    const mg_spec *s = &plan->spec;
    const mg_derived *d = &plan->derived;
    fprintf(o, "spec %s (%s)\n  hash %.16s\n", s->name, s->path, plan->spec_hash);
    fprintf(o, "model\n  vocab %d  d_model %d  layers %d (%d MoE, %d dense)  heads %d/%d kv  head_dim %d  seq %d%s\n",
            s->model.vocab, s->model.d_model, s->model.n_layer, d->n_moe_layers, d->n_dense_layers,
            s->model.n_head, s->model.n_kv_head, d->head_dim, s->model.seq_len,
            s->model.tie_embeddings ? "  tied embeddings" : "");
    fprintf(o, "moe\n  experts %d  top_k %d  d_ff %d  %s  router %s%s  %s  shared %d  dense d_ff %d\n",
            s->moe.experts, s->moe.top_k, s->moe.d_ff, mg_act_names[s->moe.activation],
            mg_router_names[s->moe.router], s->moe.renormalize ? " (renormalized)" : "",
            s->moe.capacity_factor > 0 ? "capacity" : "dropless", s->moe.shared_experts, d->d_ff_dense);
    if (s->moe.capacity_factor > 0)
        fprintf(o, "  capacity_factor %.3g, drops by %s\n", s->moe.capacity_factor, mg_drop_names[s->moe.drop_policy]);
    fprintf(o, "size\n");
    print_big(o, "params total", d->params_total, "");
    print_big(o, "params active per token", d->params_active, "");
    print_big(o, "train FLOPs per token", d->flops_per_token, "FLOP");
    fprintf(o, "memory estimate at batch %d x seq %d (%s)\n", s->train.batch, s->model.seq_len,
            mg_dtype_names[s->dtype]);
    print_bytes(o, "weights", d->mem_weights);
    print_bytes(o, "gradients", d->mem_grads);
    print_bytes(o, "optimizer state", d->mem_optimizer);
    print_bytes(o, "activations", d->mem_activations);
    print_bytes(o, "total", d->mem_total);
    fprintf(o, "parallel\n  dp %d  ep %d  zero %d\n", s->parallel.dp, s->parallel.ep, s->parallel.zero);
    fprintf(o, "kernels (%d families)\n", plan->n_families);
    for (int i = 0; i < plan->n_families; i++) {
        const mg_family *f = &plan->fam[i];
        fprintf(o, "  %-8s %s\n", mg_family_names[f->id], f->name);
        for (int e = 0; e < f->n_entries; e++) fprintf(o, "           - %s\n", f->entries[e]);
    }
}
