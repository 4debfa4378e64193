/* mg_ckpt: checkpoint directories (layout in mg_ckpt.h): atomic save, pruning, load. */
#include "mg_ckpt.h"
#include "mg_gen.h"           /* mg_version */
#include "mg_safetensors.h"
#include "mg_sb.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------ */
/* files and directories                                                                */

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Removes a flat directory (checkpoints hold files only). */
static void rm_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char p[2048];
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

static int write_text_file(const char *path, const char *text, mg_err *err)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) return mg_err_set(err, MG_EUSER, "%s: cannot create: %s", path, strerror(errno));
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, fp) != n || fflush(fp) != 0 || fsync(fileno(fp)) != 0;
    if (fclose(fp) != 0) bad = 1;
    return bad ? mg_err_set(err, MG_EUSER, "%s: write failed: %s", path, strerror(errno)) : 0;
}

/* Steps of RUN_DIR/ckpt-* directories, ascending; returns the count (*steps malloc'd). */
static int list_ckpts(const char *run_dir, long **steps)
{
    int n = 0, cap = 16;
    *steps = malloc(sizeof(long) * (size_t)cap);
    DIR *d = opendir(run_dir);
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        if (strncmp(e->d_name, "ckpt-", 5)) continue;
        long s = strtol(e->d_name + 5, &end, 10);
        if (*end || end == e->d_name + 5) continue;
        if (n == cap) *steps = realloc(*steps, sizeof(long) * (size_t)(cap *= 2));
        (*steps)[n++] = s;
    }
    closedir(d);
    for (int i = 1; i < n; i++)   /* insertion sort: a run has few checkpoints */
        for (int j = i; j > 0 && (*steps)[j - 1] > (*steps)[j]; j--) {
            long t = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = t;
        }
    return n;
}

static void ckpt_name(char *buf, size_t n, const char *run_dir, long step)
{
    snprintf(buf, n, "%s/ckpt-%06ld", run_dir, step);
}

/* ------------------------------------------------------------------------------------ */
/* save                                                                                 */

/* The tensors of model.safetensors: parameters, then selection biases. */
static int model_entries(const mg_cpu_model *m, mg_st_entry *e, char (*names)[96])
{
    int n = 0;
    for (int j = 0; j < m->n_tensors; j++) {
        const mg_cpu_tensor *t = &m->tensors[j];
        e[n++] = (mg_st_entry){t->name, t->ndim, {t->shape[0], t->shape[1]}, m->params + t->off};
    }
    for (int i = 0; i < m->L; i++) {
        if (!m->layers[i].sel_bias) continue;
        snprintf(names[i], 96, "model.layers.%d.mlp.gate.e_score_correction_bias", i);
        e[n++] = (mg_st_entry){names[i], 1, {m->E, 1}, m->layers[i].sel_bias};
    }
    return n;
}

int mg_ckpt_write_model(const char *path, const mg_cpu_model *m, int bf16, mg_err *err)
{
    mg_st_entry *e = calloc((size_t)(m->n_tensors + m->L), sizeof *e);
    char (*names)[96] = calloc((size_t)m->L, 96);
    char hash[65];
    mg_spec_hash(&m->spec, hash);
    const char *meta[] = {"format", "pt", "generator", "moegen", "moegen_version", mg_version(), "spec_hash", hash, NULL};
    int n = model_entries(m, e, names);
    int rc = mg_st_write(path, e, n, bf16 ? MG_ST_BF16 : MG_ST_F32, meta, err);
    free(e);
    free(names);
    return rc;
}

static int write_optimizer(const char *path, const mg_cpu_model *m, const mg_adamw *o, mg_err *err)
{
    int nt = m->n_tensors;
    mg_st_entry *e = calloc((size_t)(2 * nt), sizeof *e);
    char (*names)[112] = calloc((size_t)(2 * nt), 112);
    for (int j = 0; j < nt; j++) {
        const mg_cpu_tensor *t = &m->tensors[j];
        snprintf(names[j], 112, "exp_avg.%s", t->name);
        snprintf(names[nt + j], 112, "exp_avg_sq.%s", t->name);
        e[j] = (mg_st_entry){names[j], t->ndim, {t->shape[0], t->shape[1]}, o->m + t->off};
        e[nt + j] = (mg_st_entry){names[nt + j], t->ndim, {t->shape[0], t->shape[1]}, o->v + t->off};
    }
    char step[32];
    snprintf(step, sizeof step, "%ld", o->step);
    const char *meta[] = {"step", step, NULL};
    int rc = mg_st_write(path, e, 2 * nt, MG_ST_F32, meta, err);
    free(e);
    free(names);
    return rc;
}

static char *state_json(const mg_cpu_model *m, const mg_ckpt_state *st)
{
    mg_sb dump;
    mg_sb_init(&dump);
    mg_spec_dump(&m->spec, &dump);
    char hash[65];
    mg_spec_hash(&m->spec, hash);
    json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:{s:s, s:I, s:I}, s:{s:s, s:I}, s:o, s:o, s:I, s:s, s:s}",
                          "format", "moegen-ckpt-1", "moegen_version", mg_version(),
                          "step", (json_int_t)st->step, "tokens", (json_int_t)st->tokens,
                          "rng", "kind", "counter(seed, step, micro, site)", "seed", (json_int_t)st->seed,
                          "step", (json_int_t)st->step,
                          "data", "sampler", "mg_loader random, batch k = step*grad_accum + micro",
                          "position", (json_int_t)st->data_pos,
                          "val_loss", isfinite(st->val_loss) ? json_real(st->val_loss) : json_null(),
                          "best_val_loss", isfinite(st->best_val) ? json_real(st->best_val) : json_null(),
                          "best_step", (json_int_t)st->best_step,
                          "spec_hash", hash, "spec", dump.buf ? dump.buf : "");
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(j);
    mg_sb_free(&dump);
    return text;
}

static void prune(const char *run_dir, int keep, long best_step)
{
    long *steps;
    int n = list_ckpts(run_dir, &steps);
    for (int i = 0; i < n - keep; i++) {
        if (steps[i] == best_step) continue;
        char p[1536];
        ckpt_name(p, sizeof p, run_dir, steps[i]);
        rm_flat_dir(p);
    }
    free(steps);
}

static int update_best_link(const char *run_dir, long best_step, mg_err *err)
{
    char target[64], tmp[1536], link[1536];
    snprintf(target, sizeof target, "ckpt-%06ld", best_step);
    snprintf(tmp, sizeof tmp, "%s/.best.tmp", run_dir);
    snprintf(link, sizeof link, "%s/best", run_dir);
    unlink(tmp);
    if (symlink(target, tmp) || rename(tmp, link))
        return mg_err_set(err, MG_EUSER, "%s: cannot update the symlink: %s", link, strerror(errno));
    return 0;
}

int mg_ckpt_save(const char *run_dir, const mg_cpu_model *m, const mg_adamw *o, const mg_ckpt_state *st, int keep,
                 mg_err *err)
{
    char tmp[1536], final[1536], path[1600], old[1536];
    snprintf(tmp, sizeof tmp, "%s/.tmp-ckpt-%06ld-%d", run_dir, st->step, (int)getpid());
    ckpt_name(final, sizeof final, run_dir, st->step);
    rm_flat_dir(tmp);
    if (mkdir(tmp, 0755)) return mg_err_set(err, MG_EUSER, "%s: cannot create: %s", tmp, strerror(errno));
    int rc;
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    rc = mg_ckpt_write_model(path, m, 0, err);
    if (!rc) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
        rc = write_optimizer(path, m, o, err);
    }
    if (!rc) {
        char *text = state_json(m, st);
        snprintf(path, sizeof path, "%s/state.json", tmp);
        rc = text ? write_text_file(path, text, err) : mg_err_set(err, MG_EINTERNAL, "%s: cannot encode", path);
        free(text);
    }
    if (!rc && fsync_dir(tmp)) rc = mg_err_set(err, MG_EUSER, "%s: fsync failed: %s", tmp, strerror(errno));
    if (rc) {
        rm_flat_dir(tmp);
        return rc;
    }
    /* an older checkpoint of the same step (a run resumed from an earlier one) is replaced */
    snprintf(old, sizeof old, "%s/.old-ckpt-%06ld-%d", run_dir, st->step, (int)getpid());
    struct stat sb;
    int had = stat(final, &sb) == 0 && !rename(final, old);
    if (rename(tmp, final)) {
        rc = mg_err_set(err, MG_EUSER, "%s: cannot rename into place: %s", final, strerror(errno));
        rm_flat_dir(tmp);
        return rc;
    }
    if (had) rm_flat_dir(old);
    if (st->best_step >= 0 && (rc = update_best_link(run_dir, st->best_step, err))) return rc;
    fsync_dir(run_dir);
    prune(run_dir, keep < 1 ? 1 : keep, st->best_step);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* load                                                                                 */

int mg_ckpt_resolve(const char *dir, char *out, size_t n, mg_err *err)
{
    char p[1600];
    struct stat sb;
    if (stat(dir, &sb) || !S_ISDIR(sb.st_mode))
        return mg_err_set(err, MG_EUSER, "%s: no such checkpoint or run directory", dir);
    snprintf(p, sizeof p, "%s/state.json", dir);
    if (!stat(p, &sb)) {
        snprintf(out, n, "%s", dir);
        return 0;
    }
    long *steps;
    int k = list_ckpts(dir, &steps);
    if (k == 0) {
        free(steps);
        return mg_err_set(err, MG_EUSER, "%s: no state.json and no ckpt-* checkpoint in it", dir);
    }
    ckpt_name(out, n, dir, steps[k - 1]);
    free(steps);
    return 0;
}

static int get_int(json_t *j, const char *key, long *out, const char *path, mg_err *err)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_integer(v)) return mg_err_set(err, MG_EUSER, "%s: corrupt: '%s' missing or not an integer", path, key);
    *out = (long)json_integer_value(v);
    return 0;
}

int mg_ckpt_read_state(const char *ckpt, mg_ckpt_state *st, mg_spec *spec, mg_err *err)
{
    char path[1600];
    memset(st, 0, sizeof *st);
    snprintf(path, sizeof path, "%s/state.json", ckpt);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) {
        if (access(path, F_OK)) return mg_err_set(err, MG_EUSER, "%s: missing", path);
        return mg_err_set(err, MG_EUSER, "%s: corrupt JSON at line %d: %s", path, je.line, je.text);
    }
    long seed = 0;
    int rc = 0;
    json_t *rng = json_object_get(j, "rng"), *data = json_object_get(j, "data");
    const char *text = json_string_value(json_object_get(j, "spec"));
    const char *hash = json_string_value(json_object_get(j, "spec_hash"));
    if (!json_is_object(rng) || !json_is_object(data) || !text || !hash || strlen(hash) != 64)
        rc = mg_err_set(err, MG_EUSER, "%s: corrupt: rng, data, spec or spec_hash missing", path);
    if (!rc) rc = get_int(j, "step", &st->step, path, err);
    if (!rc) rc = get_int(j, "tokens", &st->tokens, path, err);
    if (!rc) rc = get_int(j, "best_step", &st->best_step, path, err);
    if (!rc) rc = get_int(rng, "seed", &seed, path, err);
    if (!rc) rc = get_int(data, "position", &st->data_pos, path, err);
    if (!rc) {
        json_t *v = json_object_get(j, "val_loss"), *b = json_object_get(j, "best_val_loss");
        st->seed = (uint64_t)seed;
        st->val_loss = json_is_number(v) ? json_number_value(v) : NAN;
        st->best_val = json_is_number(b) ? json_number_value(b) : NAN;
        snprintf(st->spec_hash, sizeof st->spec_hash, "%s", hash);
        st->spec_text = strdup(text);
        char where[1700];
        snprintf(where, sizeof where, "%s (spec)", path);
        mg_err e2;
        mg_err_clear(&e2);
        if (mg_spec_load_string(where, text, strlen(text), spec, &e2)) {
            rc = mg_err_set(err, MG_EUSER, "%s", e2.msg);
        } else {
            char h[65];
            mg_spec_hash(spec, h);
            if (strcmp(h, hash)) rc = mg_err_set(err, MG_EUSER, "%s: corrupt: spec_hash does not match the spec", path);
        }
    }
    json_decref(j);
    if (rc) mg_ckpt_state_free(st);
    return rc;
}

void mg_ckpt_state_free(mg_ckpt_state *st)
{
    free(st->spec_text);
    st->spec_text = NULL;
}

static int load_tensor(const mg_st_file *f, const char *name, int ndim, long s0, long s1, float *dst, mg_err *err)
{
    long shape[2] = {s0, s1};
    return mg_st_get(f, name, ndim, shape, dst, err);
}

int mg_ckpt_load(const char *ckpt, mg_cpu_model *m, mg_adamw *o, mg_err *err)
{
    char path[1600];
    mg_st_file f;
    snprintf(path, sizeof path, "%s/model.safetensors", ckpt);
    if (mg_st_open(path, &f, err)) return err ? err->code : MG_EUSER;
    int rc = 0, expect = m->n_tensors_full;   /* an expert shard loads its experts out of the full file */
    for (int j = 0; j < m->n_tensors && !rc; j++) {
        const mg_cpu_tensor *t = &m->tensors[j];
        rc = load_tensor(&f, t->name, t->ndim, t->shape[0], t->shape[1], m->params + t->off, err);
    }
    for (int i = 0; i < m->L && !rc; i++) {
        if (!m->layers[i].sel_bias) continue;
        char name[96];
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", i);
        rc = load_tensor(&f, name, 1, m->E, 1, m->layers[i].sel_bias, err);
        expect++;
    }
    if (!rc && mg_st_count(&f) != expect)
        rc = mg_err_set(err, MG_EUSER, "%s: %d tensors, expected %d for this spec", path, mg_st_count(&f), expect);
    mg_st_close(&f);
    if (rc || !o) return rc;

    snprintf(path, sizeof path, "%s/optimizer.safetensors", ckpt);
    if (mg_st_open(path, &f, err)) return err ? err->code : MG_EUSER;
    const char *step = mg_st_meta(&f, "step");
    char *end = NULL;
    long s = step ? strtol(step, &end, 10) : -1;
    if (!step || *end || s < 0) rc = mg_err_set(err, MG_EUSER, "%s: corrupt: __metadata__.step missing or bad", path);
    for (int j = 0; j < m->n_tensors && !rc; j++) {
        const mg_cpu_tensor *t = &m->tensors[j];
        char name[112];
        snprintf(name, sizeof name, "exp_avg.%s", t->name);
        rc = load_tensor(&f, name, t->ndim, t->shape[0], t->shape[1], o->m + t->off, err);
        snprintf(name, sizeof name, "exp_avg_sq.%s", t->name);
        if (!rc) rc = load_tensor(&f, name, t->ndim, t->shape[0], t->shape[1], o->v + t->off, err);
    }
    if (!rc && mg_st_count(&f) != 2 * m->n_tensors_full)
        rc = mg_err_set(err, MG_EUSER, "%s: %d tensors, expected %d for this spec", path, mg_st_count(&f),
                        2 * m->n_tensors_full);
    if (!rc) o->step = s;
    mg_st_close(&f);
    return rc;
}
