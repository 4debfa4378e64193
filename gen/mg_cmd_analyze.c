/* mg_cmd_analyze: `moegen analyze CKPT --data FILE`: expert specialization of a checkpoint.
 *
 * The CPU model (mg_cpu_model, eval mode) runs over the non-overlapping seq_len windows of
 * FILE (up to --tokens); each MoE layer's routing (mg_ref's topk_idx) is counted against the
 * input token at that position. Per layer and expert:
 *   share        assignments to e / all assignments (traffic share)
 *   top_tokens   tokens v with count(v) >= min_count ranked by P(e | v) = n(e, v)/count(v),
 *                with lift = P(e | v) / P(e), P(e) = share·k (the chance a token picks e)
 * Between consecutive MoE layers a → b, on top-1 experts:
 *   nmi          I(A; B) / sqrt(H(A)·H(B)) (0: independent, 1: one determines the other)
 *   follow_rate  fraction of tokens whose top-1 in b is the most common b-expert of their
 *                top-1 in a
 */
#include "mg_ckpt.h"
#include "mg_cpu_data.h"
#include "mg_cpu_model.h"
#include "mg_err.h"
#include "mg_report.h"
#include "mg_sb.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const analyze_help =
    "usage: moegen analyze CKPT --data FILE [-o analysis.json] [--html FILE] [--tokens N] [--top N]\n"
    "  Expert specialization of a checkpoint (a ckpt-NNNNNN directory or a run dir: its newest) over\n"
    "  FILE (a .tok token file, else its bytes): per MoE layer the traffic share of every expert, its\n"
    "  top tokens normalized by token frequency (P(expert | token)), and layer-to-layer consistency of\n"
    "  the top-1 expert (NMI). JSON to -o (default: stdout); --html writes the same as an HTML page;\n"
    "  `moegen report` shows RUN_DIR/analysis.json. --tokens caps the tokens read (default 65536).\n"
    "example: moegen analyze runs/ci-cpu/best --data ../shared/data/tinyshakespeare/input.txt -o runs/ci-cpu/analysis.json\n";

typedef struct tok_score { int v; long n, freq; double p; } tok_score;

static int by_p(const void *a, const void *b)
{
    const tok_score *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    if (x->n != y->n) return x->n < y->n ? 1 : -1;
    return x->v - y->v;
}

static double entropy(const long *c, int n, long total)
{
    double h = 0;
    for (int i = 0; i < n; i++)
        if (c[i]) h -= (double)c[i] / total * log((double)c[i] / total);
    return h;
}

static json_t *analyze(mg_cpu_model *m, const mg_cpu_data *d, long max_tokens, int top, int byte_text, mg_err *err)
{
    int B = m->bmax, T = m->T, E = m->E, k = m->k, V = m->V, nl = 0;
    int *ids = calloc((size_t)m->L, sizeof(int));
    for (int i = 0; i < m->L; i++)
        if (m->layers[i].moe) ids[nl++] = i;
    if (!nl) {
        free(ids);
        mg_err_set(err, MG_EUSER, "%s: the model has no MoE layer (moe.every = 0): nothing to analyze", m->spec.path);
        return NULL;
    }
    long *cnt = calloc((size_t)nl * E * V, sizeof(long)), *freq = calloc((size_t)V, sizeof(long));
    long *traffic = calloc((size_t)nl * E, sizeof(long)), *joint = calloc((size_t)(nl > 1 ? nl - 1 : 1) * E * E, sizeof(long));
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * (size_t)(T + 1));
    int *top1 = malloc(sizeof(int) * (size_t)nl * B * T);
    if (!cnt || !freq || !traffic || !joint || !tok || !top1) {
        mg_err_set(err, MG_EUSER, "analyze: out of memory for %d layers x %d experts x %d tokens of vocabulary", nl, E, V);
        free(ids), free(cnt), free(freq), free(traffic), free(joint), free(tok), free(top1);
        return NULL;
    }
    long W = (d->n_val - 1) / T, n = 0;
    if (W > max_tokens / T) W = max_tokens / T > 0 ? max_tokens / T : 1;
    mg_cpu_ctx c = {.train = 0, .scale = 1.0};
    for (long w = 0; w < W; w += B) {
        int b = (int)(W - w < B ? W - w : B);
        for (int r = 0; r < b; r++) memcpy(tok + (long)r * (T + 1), d->val + (w + r) * T, sizeof(int32_t) * (size_t)(T + 1));
        mg_cpu_out o;
        mg_cpu_model_run(m, tok, b, &c, 0, &o);
        for (int r = 0; r < b; r++)
            for (int t = 0; t < T; t++) {
                int v = tok[(long)r * (T + 1) + t];
                if (v < 0 || v >= V) continue;
                freq[v]++;
                for (int li = 0; li < nl; li++) {
                    const int *sel = m->layers[ids[li]].rf.topk_idx + ((size_t)r * T + t) * k;
                    for (int j = 0; j < k; j++) {
                        cnt[((size_t)li * E + sel[j]) * V + v]++;
                        traffic[(size_t)li * E + sel[j]]++;
                    }
                    top1[(size_t)li * B * T + (size_t)r * T + t] = sel[0];
                    if (li) joint[((size_t)(li - 1) * E + top1[(size_t)(li - 1) * B * T + (size_t)r * T + t]) * E + sel[0]]++;
                }
            }
        n += (long)b * T;
    }
    json_t *a = json_object(), *layers = json_array(), *cons = json_array();
    json_object_set_new(a, "tokens", json_integer(n));
    json_object_set_new(a, "experts", json_integer(E));
    json_object_set_new(a, "top_k", json_integer(k));
    int min_count = n >= 20000 ? 20 : 5;
    json_object_set_new(a, "min_count", json_integer(min_count));
    tok_score *sc = malloc(sizeof(tok_score) * (size_t)V);
    for (int li = 0; li < nl; li++) {
        json_t *L = json_object(), *ex = json_array();
        long tot = 0;
        for (int e = 0; e < E; e++) tot += traffic[(size_t)li * E + e];
        json_object_set_new(L, "layer", json_integer(ids[li]));
        for (int e = 0; e < E; e++) {
            json_t *x = json_object(), *tt = json_array();
            double share = tot ? (double)traffic[(size_t)li * E + e] / (double)tot : 0, pe = share * k;
            int ns = 0;
            for (int v = 0; v < V; v++) {
                long ne = cnt[((size_t)li * E + e) * V + v];
                if (freq[v] >= min_count && ne > 0) sc[ns++] = (tok_score){v, ne, freq[v], (double)ne / (double)freq[v]};
            }
            qsort(sc, (size_t)ns, sizeof *sc, by_p);
            for (int i = 0; i < ns && i < top; i++) {
                json_t *t = json_object();
                json_object_set_new(t, "id", json_integer(sc[i].v));
                if (byte_text) {
                    char s[8];
                    int ch = sc[i].v;
                    if (ch == '\n') snprintf(s, sizeof s, "\\n");
                    else if (ch == ' ') snprintf(s, sizeof s, "\u2423");
                    else if (ch >= 33 && ch < 127) snprintf(s, sizeof s, "%c", ch);
                    else snprintf(s, sizeof s, "\\x%02x", ch);
                    json_object_set_new(t, "text", json_string(s));
                }
                json_object_set_new(t, "count", json_integer(sc[i].n));
                json_object_set_new(t, "freq", json_integer(sc[i].freq));
                json_object_set_new(t, "p", json_real(sc[i].p));
                json_object_set_new(t, "lift", json_real(pe > 0 ? sc[i].p / pe : 0));
                json_array_append_new(tt, t);
            }
            json_object_set_new(x, "expert", json_integer(e));
            json_object_set_new(x, "share", json_real(share));
            json_object_set_new(x, "top_tokens", tt);
            json_array_append_new(ex, x);
        }
        json_object_set_new(L, "experts", ex);
        json_array_append_new(layers, L);
        if (li) {
            const long *J = joint + (size_t)(li - 1) * E * E;
            long *ra = calloc((size_t)E, sizeof(long)), *rb = calloc((size_t)E, sizeof(long)), tot1 = 0, follow = 0;
            double mi = 0;
            for (int i = 0; i < E; i++)
                for (int j = 0; j < E; j++) ra[i] += J[i * E + j], rb[j] += J[i * E + j], tot1 += J[i * E + j];
            for (int i = 0; i < E; i++) {
                long best = 0;
                for (int j = 0; j < E; j++) {
                    if (J[i * E + j] > best) best = J[i * E + j];
                    if (J[i * E + j])
                        mi += (double)J[i * E + j] / tot1 * log((double)J[i * E + j] * tot1 / ((double)ra[i] * rb[j]));
                }
                follow += best;
            }
            double ha = entropy(ra, E, tot1), hb = entropy(rb, E, tot1);
            json_t *cj = json_object();
            json_object_set_new(cj, "from", json_integer(ids[li - 1]));
            json_object_set_new(cj, "to", json_integer(ids[li]));
            json_object_set_new(cj, "nmi", json_real(ha > 0 && hb > 0 ? mi / sqrt(ha * hb) : 0));
            json_object_set_new(cj, "follow_rate", json_real(tot1 ? (double)follow / tot1 : 0));
            json_array_append_new(cons, cj);
            free(ra), free(rb);
        }
    }
    json_object_set_new(a, "layers", layers);
    json_object_set_new(a, "consistency", cons);
    free(sc), free(ids), free(cnt), free(freq), free(traffic), free(joint), free(tok), free(top1);
    return a;
}

int mg_cmd_analyze(int argc, char **argv)
{
    const char *ckpt_in = NULL, *data = NULL, *out = NULL, *html = NULL;
    long max_tokens = 65536, top = 8;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return fputs(analyze_help, stdout), 0;
        if (!strcmp(a, "--data") || !strcmp(a, "-o") || !strcmp(a, "--html") || !strcmp(a, "--tokens") ||
            !strcmp(a, "--top")) {
            if (!next) return fprintf(stderr, "moegen: analyze: %s needs a value\n", a), MG_EUSER;
            i++;
            if (!strcmp(a, "--data")) data = next;
            else if (!strcmp(a, "-o")) out = next;
            else if (!strcmp(a, "--html")) html = next;
            else {
                char *end;
                long v = strtol(next, &end, 10);
                if (*end || v < 1) return fprintf(stderr, "moegen: analyze: %s = '%s': must be an integer >= 1\n", a, next), MG_EUSER;
                *(!strcmp(a, "--top") ? &top : &max_tokens) = v;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "moegen: analyze: unknown option '%s' (see moegen analyze --help)\n", a);
            return MG_EUSER;
        } else if (!ckpt_in) ckpt_in = a;
        else return fprintf(stderr, "moegen: analyze: unexpected argument '%s'\n", a), MG_EUSER;
    }
    if (!ckpt_in || !data)
        return fprintf(stderr, "moegen: analyze: missing %s (usage: moegen analyze CKPT --data FILE)\n",
                       ckpt_in ? "--data FILE" : "checkpoint"), MG_EUSER;
    mg_err err;
    mg_err_clear(&err);
    char ckpt[1600];
    mg_ckpt_state st;
    mg_spec spec;
    mg_cpu_data d;
    mg_cpu_model m;
    memset(&m, 0, sizeof m);
    if (mg_ckpt_resolve(ckpt_in, ckpt, sizeof ckpt, &err) || mg_ckpt_read_state(ckpt, &st, &spec, &err))
        return fprintf(stderr, "moegen: %s\n", err.msg), err.code;
    mg_ckpt_state_free(&st);
    if (mg_cpu_data_open_eval(data, &spec, &d, &err)) return fprintf(stderr, "moegen: %s\n", err.msg), err.code;
    int rc = mg_cpu_model_create(&m, &spec, spec.train.batch, &err);
    if (!rc) rc = mg_ckpt_load(ckpt, &m, NULL, &err);
    json_t *a = NULL;
    if (!rc) {
        size_t dl = strlen(data);
        a = analyze(&m, &d, max_tokens, (int)top, !(dl > 4 && !strcmp(data + dl - 4, ".tok")), &err);
        if (!a) rc = err.code ? err.code : MG_EINTERNAL;
    }
    mg_cpu_model_free(&m);
    mg_cpu_data_free(&d);
    if (rc) return fprintf(stderr, "moegen: %s\n", err.msg), rc;
    json_object_set_new(a, "checkpoint", json_string(ckpt));
    json_object_set_new(a, "data", json_string(data));
    char *text = json_dumps(a, JSON_INDENT(1) | JSON_REAL_PRECISION(6));
    if (!out) puts(text);
    else {
        FILE *f = fopen(out, "w");
        if (!f || fputs(text, f) < 0 || fputc('\n', f) < 0 || fclose(f)) {
            fprintf(stderr, "moegen: %s: cannot write: %s\n", out, strerror(errno));
            rc = MG_EUSER;
        }
    }
    free(text);
    if (!rc && html) {
        mg_sb body, page;
        mg_sb_init(&body), mg_sb_init(&page);
        mg_report_analysis_html(a, &body);
        mg_report_page("moegen analyze", body.buf, &page);
        FILE *f = fopen(html, "w");
        if (!f || fwrite(page.buf, 1, page.len, f) != page.len || fclose(f)) {
            fprintf(stderr, "moegen: %s: cannot write: %s\n", html, strerror(errno));
            rc = MG_EUSER;
        }
        mg_sb_free(&body), mg_sb_free(&page);
    }
    if (!rc && out) fprintf(stderr, "analyze: %s over %lld tokens of %s -> %s\n", ckpt,
                            (long long)json_integer_value(json_object_get(a, "tokens")), data, out);
    json_decref(a);
    return rc;
}
