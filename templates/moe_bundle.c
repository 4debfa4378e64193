/* moe_bundle: the loader and C API of a bundle written by `moegen gen --bundle`.
 *
 * The generator prepends a prologue (the layer's name, dims, kernel families and which
 * optional weights the API takes) and writes the result as moe_<name>.c. That file is one
 * translation unit: the launch sequence (mg_launch.c, the same file moegen's runtime runs),
 * the embedded images (moe_<name>_blob.c) and this API. Everything but the moe_<name>_*
 * functions is static, so several bundles link into one program.
 *
 * Image choice: the newest embedded cubin the device runs (sm_XYa only on exactly X.Y,
 * sm_XY on X.Y or a later X.*), else the PTX, which cudaLibraryLoadData JITs. */
#ifndef MOE_GENERATED
#error "templates/moe_bundle.c is filled in by `moegen gen --bundle`: compile the generated moe_<name>.c"
#endif

#define MG_LAUNCH_API static
#include "mg_launch.c"   /* kernel lookup, workspace carving, grid rules, launch order */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include MOE_HEADER

typedef struct moe_image {
    const char *arch;                        /* "sm_90a", "sm_80", "compute_80" */
    int cc;                                  /* 90, 80 */
    int exact;                               /* 1: arch-specific cubin, runs only on exactly cc */
    int ptx;                                 /* 1: PTX text, JIT-compiled by the driver at load */
    const void *data[MG_LAUNCH_FAMILIES];    /* one image per kernel family */
} moe_image;

#include MOE_BLOB   /* static const moe_image moe_images[MOE_N_IMAGES]; MOE_IMAGE_LIST */

struct MOE_T {
    mg_launch L;
    cudaLibrary_t lib[MG_LAUNCH_FAMILIES];
    const moe_image *img;
    int device;
    char err[512];   /* detail of the last failure on this layer */
};

static const mg_launch_dims moe_dims = MOE_DIMS;
static const char *const moe_families[MG_LAUNCH_FAMILIES] = MOE_FAMILIES;

const char *MOE_FN(strerror)(int status)
{
    switch (status) {
    case MOE_CODE(OK): return "success";
    case MOE_CODE(EINVAL): return "invalid argument (NULL or misaligned pointer, tokens out of range)";
    case MOE_CODE(ENODEVICE): return "no CUDA device or driver";
    case MOE_CODE(ENOIMAGE): return "no embedded image runs on this device (bundle has " MOE_IMAGE_LIST ")";
    case MOE_CODE(ENOMEM): return "out of host memory";
    case MOE_CODE(ECUDA): return "CUDA call failed (see " MOE_PREFIX "_last_error)";
    default: return "unknown status";
    }
}

const char *MOE_FN(last_error)(const MOE_T *layer) { return layer ? layer->err : "no layer"; }
const char *MOE_FN(image)(const MOE_T *layer) { return layer && layer->img ? layer->img->arch : ""; }

static int moe_little_endian(void)
{
    const unsigned one = 1;
    return *(const unsigned char *)&one == 1;   /* the images are stored as little-endian words */
}

/* The image for compute capability cc (or the one named `want`: an arch, or "ptx"). */
static const moe_image *moe_pick(int cc, const char *want)
{
    const moe_image *best = NULL;
    int i;
    for (i = 0; i < MOE_N_IMAGES; i++) {
        const moe_image *im = &moe_images[i];
        if (want) {
            if (!strcmp(want, im->arch) || (!strcmp(want, "ptx") && im->ptx)) return im;
            continue;
        }
        if (im->ptx || (im->exact ? cc != im->cc : (cc / 10 != im->cc / 10 || cc < im->cc))) continue;
        if (!best || im->cc > best->cc || (im->cc == best->cc && im->exact)) best = im;
    }
    for (i = 0; !best && !want && i < MOE_N_IMAGES; i++)
        if (moe_images[i].ptx && cc >= moe_images[i].cc) best = &moe_images[i];
    return best;
}

static int moe_status(int launch_rc)
{
    return launch_rc == MG_LAUNCH_OK ? MOE_CODE(OK) : launch_rc == MG_LAUNCH_EUSER ? MOE_CODE(EINVAL) : MOE_CODE(ECUDA);
}

void MOE_FN(destroy)(MOE_T *layer)
{
    int f;
    if (!layer) return;
    for (f = 0; f < MG_LAUNCH_FAMILIES; f++)
        if (layer->lib[f]) cudaLibraryUnload(layer->lib[f]);
    free(layer);
}

/* Loads the image's families and looks up the kernels on the current device. */
static int moe_load(MOE_T *m)
{
    int f, rc;
    for (f = 0; f < MG_LAUNCH_FAMILIES; f++) {
        cudaError_t e = cudaLibraryLoadData(&m->lib[f], m->img->data[f], NULL, NULL, 0, NULL, NULL, 0);
        if (e != cudaSuccess) {
            snprintf(m->err, sizeof m->err, "cudaLibraryLoadData(%s, %s): %s", moe_families[f], m->img->arch,
                     cudaGetErrorString(e));
            return MOE_CODE(ECUDA);
        }
    }
    m->L.wg = !strcmp(m->img->arch, "sm_90a");   /* same GEMM path as mg_moe (templates/mg_wgmma.cuh) */
    rc = mg_launch_load(&m->L, &moe_dims, m->lib, moe_families, m->err, sizeof m->err);
    return rc == MG_LAUNCH_EUSER ? MOE_CODE(ENOIMAGE) : moe_status(rc);
}

int MOE_FN(create)(MOE_T **layer, const MOE_FN(config) *config)
{
    char *eb = config ? config->errbuf : NULL;
    const size_t en = config && config->errbuf ? config->errbuf_size : 0;
    int n = 0, prev = 0, dev, major = 0, minor = 0, rc;
    MOE_T *m;
    if (!layer) return MOE_CODE(EINVAL);
    *layer = NULL;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0 || cudaGetDevice(&prev) != cudaSuccess) {
        (void)cudaGetLastError();
        if (en) snprintf(eb, en, "no CUDA device");
        return MOE_CODE(ENODEVICE);
    }
    dev = config && config->device >= 0 ? config->device : prev;
    if (dev >= n) {
        if (en) snprintf(eb, en, "device %d: there are %d CUDA devices", dev, n);
        return MOE_CODE(EINVAL);
    }
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
        if (en) snprintf(eb, en, "cannot read the compute capability of device %d", dev);
        return MOE_CODE(ECUDA);
    }
    if (!(m = (MOE_T *)calloc(1, sizeof *m))) return MOE_CODE(ENOMEM);
    m->device = dev;
    m->img = moe_little_endian() ? moe_pick(major * 10 + minor, config ? config->image : NULL) : NULL;
    if (!m->img) {
        snprintf(m->err, sizeof m->err, "no embedded image for sm_%d%d%s%s (bundle has " MOE_IMAGE_LIST ")", major,
                 minor, config && config->image ? " named " : "", config && config->image ? config->image : "");
        rc = MOE_CODE(ENOIMAGE);
    } else {
        if (dev != prev && cudaSetDevice(dev) != cudaSuccess) rc = MOE_CODE(ECUDA);
        else rc = moe_load(m);
        if (dev != prev) cudaSetDevice(prev);
    }
    if (rc) {
        if (en) snprintf(eb, en, "%s", m->err);
        MOE_FN(destroy)(m);
        return rc;
    }
    *layer = m;
    return MOE_CODE(OK);
}

size_t MOE_FN(workspace_size)(const MOE_T *layer, int tokens)
{
    (void)layer;
    return tokens < 1 ? 0 : mg_launch_carve(&moe_dims, tokens, NULL, NULL);
}

/* Argument checks shared by forward and backward; 0 when fine. */
static int moe_bad(MOE_T *l, const char *what, const void *p, unsigned align)
{
    if (!p) snprintf(l->err, sizeof l->err, "%s is NULL", what);
    else if ((uintptr_t)p % align) snprintf(l->err, sizeof l->err, "%s = %p: not %u-byte aligned", what, p, align);
    else return 0;
    return 1;
}
static int moe_bad_call(MOE_T *l, void *workspace, int tokens)
{
    if (tokens < 1) {
        snprintf(l->err, sizeof l->err, "tokens = %d: must be >= 1", tokens);
        return 1;
    }
    return moe_bad(l, "workspace", workspace, 256);
}

const float *MOE_FN(losses)(const MOE_T *layer, void *workspace, int tokens)
{
    mg_launch_ws ws;
    if (!layer || !workspace || tokens < 1) return NULL;
    mg_launch_carve(&moe_dims, tokens, workspace, &ws);
    return ws.loss;
}

int MOE_FN(forward)(MOE_T *layer, struct CUstream_st *stream, const void *x, const void *router_w,
#if MOE_HAS_BIAS
                    const float *router_bias,
#endif
                    const void *w_up, const void *w_down,
#if MOE_SHARED
                    const void *ws_up, const void *ws_down,
#endif
                    void *y, void *workspace, int tokens)
{
#if !MOE_HAS_BIAS
    const float *router_bias = NULL;
#endif
#if !MOE_SHARED
    const void *ws_up = NULL, *ws_down = NULL;
#endif
    mg_launch_ws ws;
    mg_launch_weights w;
    if (!layer) return MOE_CODE(EINVAL);
    if (moe_bad_call(layer, workspace, tokens) || moe_bad(layer, "x", x, 16) || moe_bad(layer, "router_w", router_w, 16) ||
        moe_bad(layer, "w_up", w_up, 16) || moe_bad(layer, "w_down", w_down, 16) || moe_bad(layer, "y", y, 16) ||
        (router_bias && moe_bad(layer, "router_bias", router_bias, 4)) ||
        (MOE_SHARED && (moe_bad(layer, "ws_up", ws_up, 16) || moe_bad(layer, "ws_down", ws_down, 16))))
        return MOE_CODE(EINVAL);
    mg_launch_carve(&moe_dims, tokens, workspace, &ws);
    w.wg = router_w, w.w_up = w_up, w.w_dn = w_down, w.ws_up = ws_up, w.ws_dn = ws_down, w.bias = router_bias;
    return moe_status(mg_launch_forward(&layer->L, &ws, stream, &w, x, y, tokens, layer->err, sizeof layer->err));
}

int MOE_FN(backward)(MOE_T *layer, struct CUstream_st *stream, const void *x, const void *router_w,
#if MOE_HAS_BIAS
                     const float *router_bias,
#endif
                     const void *w_up, const void *w_down,
#if MOE_SHARED
                     const void *ws_up, const void *ws_down,
#endif
                     const void *dy, void *dx, float *d_router_w, float *d_w_up, float *d_w_down,
#if MOE_SHARED
                     float *d_ws_up, float *d_ws_down,
#endif
                     void *workspace, int tokens)
{
#if !MOE_HAS_BIAS
    const float *router_bias = NULL;
#endif
#if !MOE_SHARED
    const void *ws_up = NULL, *ws_down = NULL;
    float *d_ws_up = NULL, *d_ws_down = NULL;
#endif
    mg_launch_ws ws;
    mg_launch_weights w;
    mg_launch_grads g;
    if (!layer) return MOE_CODE(EINVAL);
    if (moe_bad_call(layer, workspace, tokens) || moe_bad(layer, "x", x, 16) || moe_bad(layer, "router_w", router_w, 16) ||
        moe_bad(layer, "w_up", w_up, 16) || moe_bad(layer, "w_down", w_down, 16) || moe_bad(layer, "dy", dy, 16) ||
        moe_bad(layer, "dx", dx, 16) || moe_bad(layer, "d_router_w", d_router_w, 16) ||
        moe_bad(layer, "d_w_up", d_w_up, 16) || moe_bad(layer, "d_w_down", d_w_down, 16) ||
        (MOE_SHARED && (moe_bad(layer, "ws_up", ws_up, 16) || moe_bad(layer, "ws_down", ws_down, 16) ||
                        moe_bad(layer, "d_ws_up", d_ws_up, 16) || moe_bad(layer, "d_ws_down", d_ws_down, 16))))
        return MOE_CODE(EINVAL);
    (void)router_bias;   /* selection only: no gradient */
    mg_launch_carve(&moe_dims, tokens, workspace, &ws);
    w.wg = router_w, w.w_up = w_up, w.w_dn = w_down, w.ws_up = ws_up, w.ws_dn = ws_down, w.bias = router_bias;
    g.dwg = d_router_w, g.dw_up = d_w_up, g.dw_dn = d_w_down, g.dws_up = d_ws_up, g.dws_dn = d_ws_down;
    return moe_status(
        mg_launch_backward(&layer->L, &ws, stream, &w, x, dy, dx, &g, tokens, layer->err, sizeof layer->err));
}
