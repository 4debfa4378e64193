/* moegen.h: the public API of libmoegen in one include (installed as <moegen/moegen.h>).
 *
 * The pipeline, one module per step (each header documents its calls):
 *   mg_spec.h    load + validate a Lua spec (sandboxed): mg_spec_load, mg_spec_load_string
 *   mg_plan.h    kernel families, names and tiles for a spec: mg_plan_make
 *   mg_gen.h     CUDA sources, C header, manifest: mg_gen_sources, mg_gen_write
 *   mg_jit.h     NVRTC compile through the on-disk cache: mg_jit_compile, mg_jit_compile_many
 *   mg_bundle.h  a standalone bundle (embedded cubins + C API): mg_bundle_write
 *   mg_moe.h     the layer on the GPU: mg_moe_create, mg_moe_forward, mg_moe_backward
 *   mg_err.h     errors: every call returns MG_OK, MG_EUSER or MG_EINTERNAL and fills an mg_err
 *
 *   pkg-config --cflags --libs moegen     (see examples/pkgconfig/) */
#ifndef MOEGEN_H
#define MOEGEN_H

#include "mg_err.h"
#include "mg_spec.h"
#include "mg_plan.h"
#include "mg_gen.h"
#include "mg_jit.h"
#include "mg_bundle.h"
#include "mg_moe.h"

#endif
