/* mg_bench_shapes: the four MoE benchmark shapes of the kernels issue and the expert-GEMM
 * FLOP count that every benchmark (layer, dense roofline, bundle) reports against. */
#ifndef MG_BENCH_SHAPES_H
#define MG_BENCH_SHAPES_H

typedef struct bench_shape {
    const char *name;
    int T, d, ff, E, k;
} bench_shape;

static const bench_shape SHAPES[] = {
    {"mixtral", 8192, 4096, 14336, 8, 2},
    {"olmoe", 16384, 2048, 1024, 64, 8},
    {"finegrained", 16384, 2048, 768, 128, 8},
    {"small", 16384, 768, 3072, 8, 2},
};
#define NSHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

/* Expert-GEMM FLOPs of fwd+bwd with SwiGLU: 3·(2·T·k·d·2ff + 2·T·k·ff·d). */
static inline double expert_flop(const bench_shape *s)
{
    double Tk = (double)s->T * s->k;
    return 3.0 * (2.0 * Tk * s->d * 2.0 * s->ff + 2.0 * Tk * s->ff * s->d);
}
#endif
