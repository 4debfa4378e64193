/* mg_bundle: a plan as a standalone directory that builds and runs without moegen, Lua or
 * NVRTC: the family sources, cubins per arch plus PTX embedded in a C loader, the C API
 * header, a Makefile fragment and a CMakeLists.txt (`moegen gen --bundle`).
 *
 * Files, for a spec named "tiny" (C identifier of the name):
 *   moe_tiny.h            the C API (C99/C11/C++ clean, no CUDA header needed)
 *   moe_tiny.c            loader + launches + API: the one file to compile (includes the next three)
 *   moe_tiny_blob.c       the embedded images: one cubin per family and arch, and PTX
 *   mg_launch.c/.h        verbatim copies of runtime/mg_launch.* (the launch sequence)
 *   moe_params.h          verbatim copy of templates/moe_params.h
 *   moe_tiny.mk, CMakeLists.txt   build glue for consumers
 *   <family>.cu, <family>.<arch>.cubin|.ptx, moe_tiny_kernels.h, manifest.json   for reference */
#ifndef MG_BUNDLE_H
#define MG_BUNDLE_H

#include "mg_err.h"
#include "mg_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MG_BUNDLE_DEFAULT_ARCHS "sm_80,sm_90a"
#define MG_BUNDLE_PTX_ARCH "compute_80"
#define MG_BUNDLE_MAX_ARCHS 8

typedef struct mg_bundle_opts {
    const char *archs;   /* comma-separated real archs; NULL = MG_BUNDLE_DEFAULT_ARCHS */
    int jobs;            /* parallel compiles; 0 = one per core */
    int no_cache;        /* 1: bypass the NVRTC cache */
} mg_bundle_opts;

/* Generates, compiles (cubins for every arch, PTX for MG_BUNDLE_PTX_ARCH) and writes the
 * bundle to dir atomically (an existing dir is replaced whole). */
int mg_bundle_write(mg_plan *plan, const mg_bundle_opts *o, const char *dir, mg_err *err);

/* Splits a comma-separated arch list and checks each name; returns the count or -1 (err set). */
int mg_bundle_archs(const char *list, char archs[MG_BUNDLE_MAX_ARCHS][16], mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
