#!/bin/sh
# gpu_nvcc: compile checks of the kernel templates, no GPU needed.
#   1. each template standalone with nvcc (mg_defaults.cuh constants);
#   2. each template assembled the way the generator does it (constant block, #line +
#      moe_params.h, mg_common.cuh, mg_wgmma.cuh, the headers on its "moegen:parts" line,
#      template) and
#      compiled by NVRTC (no CUDA headers) for
#      sm_90a and sm_80, over a set of spec/tile variants; prints registers and fails on
#      spills or local memory.
# usage: sh tests/gpu_nvcc.sh [variant-filter]
set -e
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "== nvcc standalone"
for f in "$ROOT"/templates/moe_*.cu; do
    "$CUDA_HOME/bin/nvcc" -std=c++17 -arch=sm_90 -c "$f" -o "$TMP/o.o"
    echo "ok $(basename "$f")"
done

cat > "$TMP/nv.c" <<'EOF'
#include <nvrtc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static char *slurp(const char *p)
{
    FILE *f = fopen(p, "rb");
    if (!f) { perror(p); exit(2); }
    fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
    char *b = malloc(n + 1);
    if (fread(b, 1, n, f) != (size_t)n) exit(2);
    b[n] = 0; fclose(f); return b;
}
/* usage: nv ROOT TEMPLATE ARCH "constant block" [PART...] (PART: a header of the template's
 * "moegen:parts" line, without .cuh, inlined after mg_common.cuh as the generator does) */
int main(int argc, char **argv)
{
    const char *root = argv[1], *tmpl = argv[2], *arch = argv[3], *consts = argv[4];
    char p[1024];
    snprintf(p, sizeof p, "%s/templates/moe_params.h", root); char *params = slurp(p);
    snprintf(p, sizeof p, "%s/templates/mg_common.cuh", root); char *common = slurp(p);
    snprintf(p, sizeof p, "%s/templates/%s", root, tmpl); char *t = slurp(p);
    size_t n = strlen(params) + strlen(common) + strlen(t) + strlen(consts) + 4096;
    char *parts[8];
    int np = 0;
    for (int i = 5; i < argc && np < 8; i++, np++) {
        snprintf(p, sizeof p, "%s/templates/%s.cuh", root, argv[i]);
        parts[np] = slurp(p);
        n += strlen(parts[np]) + 256;
    }
    char *src = malloc(n);
    size_t o = (size_t)snprintf(src, n, "// test\n#define MOEGEN_GENERATED 1\n%s\n#line 1 \"templates/moe_params.h\"\n%s\n"
                                "#line 1 \"templates/mg_common.cuh\"\n%s\n", consts, params, common);
    for (int i = 0; i < np; i++)
        o += (size_t)snprintf(src + o, n - o, "#line 1 \"templates/%s.cuh\"\n%s\n", argv[5 + i], parts[i]);
    snprintf(src + o, n - o, "#line 1 \"templates/%s\"\n%s\n", tmpl, t);
    nvrtcProgram prog;
    nvrtcCreateProgram(&prog, src, tmpl, 0, NULL, NULL);
    char archopt[64];
    snprintf(archopt, sizeof archopt, "--gpu-architecture=%s", arch);
    const char *opts[] = {archopt, "-std=c++17", "--ptxas-options=-v", "-default-device"};
    nvrtcResult r = nvrtcCompileProgram(prog, 4, opts);
    size_t ls; nvrtcGetProgramLogSize(prog, &ls);
    char *log = malloc(ls + 1); nvrtcGetProgramLog(prog, log); log[ls] = 0;
    printf("%s", log);
    if (r != NVRTC_SUCCESS) { printf("NVRTC FAILED: %s\n", nvrtcGetErrorString(r)); return 1; }
    size_t cs; nvrtcGetCUBINSize(prog, &cs);
    printf("cubin %zu bytes\n", cs);
    return 0;
}
EOF
gcc -O1 -I"$CUDA_HOME/include" "$TMP/nv.c" -o "$TMP/nv" -L"$CUDA_HOME/lib64" -Wl,-rpath,"$CUDA_HOME/lib64" -lnvrtc

consts() { # D FF E TOPK ACT ROUTER RENORM DTYPE SHARED BM BN BK STAGES WARPS
    glu=0; f2=$2; if [ "$5" -le 1 ]; then glu=1; f2=$(($2 * 2)); fi
    printf 'static constexpr int MG_D = %s;\nstatic constexpr int MG_FF = %s;\nstatic constexpr int MG_F2 = %s;\n' "$1" "$2" "$f2"
    printf 'static constexpr int MG_E = %s;\nstatic constexpr int MG_TOPK = %s;\nstatic constexpr int MG_ACT = %s;\n' "$3" "$4" "$5"
    printf 'static constexpr int MG_GLU = %s;\nstatic constexpr int MG_ROUTER = %s;\nstatic constexpr int MG_RENORM = %s;\n' "$glu" "$6" "$7"
    printf 'static constexpr int MG_CAPACITY = 0;\nstatic constexpr float MG_CAPACITY_FACTOR = 0.0f;\n'
    printf 'static constexpr int MG_DROP_POLICY = 0;\n'
    printf 'static constexpr int MG_DTYPE = %s;\nstatic constexpr int MG_SHARED = %s;\n' "$8" "$9"
    printf 'static constexpr float MG_AUX_COEF = 0.01f;\nstatic constexpr float MG_Z_COEF = 0.001f;\n'
    printf 'static constexpr int MG_BM = %s, MG_BN = %s, MG_BK = %s, MG_STAGES = %s, MG_WARPS = %s;\n' "${10}" "${11}" "${12}" "${13}" "${14}"
}

fail=0
run_variant() { # name args...
    name=$1; shift
    case "$name" in *"$FILTER"*) ;; *) return 0 ;; esac
    c=$(consts "$@")
    for arch in sm_90a sm_80; do
        for t in moe_router.cu moe_dispatch.cu moe_up.cu moe_down.cu moe_combine.cu; do
            parts="mg_wgmma $(sed -n 's|^// moegen:parts ||p' "$ROOT/templates/$t")"
            # shellcheck disable=SC2086 # parts: one word per header
            out=$("$TMP/nv" "$ROOT" "$t" "$arch" "$c" $parts 2>&1) || { echo "FAIL $name $arch $t"; echo "$out"; fail=1; continue; }
            regs=$(printf '%s\n' "$out" | sed -n 's/.*Used \([0-9]*\) registers.*/\1/p' | sort -n | tail -1)
            if printf '%s\n' "$out" | grep -E '[1-9][0-9]* bytes (spill|stack)' >/dev/null; then
                echo "SPILL $name $arch $t"; printf '%s\n' "$out" | grep -B1 -E '[1-9][0-9]* bytes (spill|stack)'; fail=1
            else
                echo "ok $name $arch $t (max regs $regs)"
            fi
        done
    done
}
FILTER=${1:-}
echo "== NVRTC generated-style variants"
#                         D    FF   E   K ACT RT RN DT SH BM  BN  BK ST W
run_variant bf16-swiglu   512  1024 8   2 0   0  1  0  0  128 128 32 3  8
run_variant fp16-gelu     256  512  1   1 2   0  1  1  0  64  64  16 2  4
run_variant fp32-relu-sig 256  512  256 8 3   1  1  2  1  64  64  16 2  4
run_variant bf16-geglu    2048 1408 64  6 1   1  1  0  2  128 64  64 4  4
run_variant fp32-glu-big  512  1024 16  1 0   2  0  2  0  128 128 32 3  8
run_variant fp16-swiglu-w4 512 1024 8   2 0   0  0  1  1  128 128 32 3  4
run_variant bf16-64x128   4096 14336 8  2 0   0  1  0  0  64  128 64 4  8
run_variant bf16-e256    2048 768  256 8 0   0  1  0  0  128 128 32 3  8
run_variant fp16-e128    1024 512  128 4 0   1  1  1  0  128 64  32 3  4
[ $fail -eq 0 ] && echo "all ok"
exit $fail
