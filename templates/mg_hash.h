/* mg_hash: the counter-based RNG of dropout, shared verbatim by the CUDA kernels
 * (templates/lm_dropout.cu) and C code (the CPU trainer, the GPU selftest's reference).
 * Valid C11 and CUDA C++, no includes (NVRTC has no system headers).
 *
 * Definition (the same as runtime/mg_cpu_ops.h's mg_mix64 / mg_drop_stream / mg_dropout):
 *   mix64(z)   = splitmix64 step: z += 0x9E3779B97F4A7C15; z = (z ^ z>>30)·0xBF58476D1CE4E5B9;
 *                z = (z ^ z>>27)·0x94D049BB133111EB; return z ^ z>>31   (all mod 2^64)
 *   stream     = mix64(mix64(mix64(mix64(seed) ^ step) ^ micro) ^ site)
 *                seed: train.seed; step: optimizer step; micro: micro-batch index within the
 *                step (gradient accumulation), 0 without; site: which dropout of the model
 *                (2·layer + 0 attention output, 1 FFN output; the trainer owns the numbering)
 *   u(i)       = mix64(stream ^ i) >> 40          (24 bits; i = flat element index in the
 *                                                 [rows, width] tensor, row-major, 0-based)
 *   keep(i)    = u(i)·2^-24 >= p  <=>  u(i) >= ceil(p·2^24) = mg_hash_drop_threshold(p)
 *   kept values are scaled by (float)(1/(1−p)) = mg_hash_drop_scale(p), dropped ones are 0.
 * The backward pass recomputes the same mask from (stream, i): nothing is stored. */
#ifndef MG_HASH_H
#define MG_HASH_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MG_HASH_FN static __host__ __device__ __forceinline__
#else
#define MG_HASH_FN static inline
#endif

typedef unsigned long long mg_hash_u64;

MG_HASH_FN mg_hash_u64 mg_hash_mix64(mg_hash_u64 z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

MG_HASH_FN mg_hash_u64 mg_hash_drop_stream(mg_hash_u64 seed, mg_hash_u64 step, mg_hash_u64 micro, mg_hash_u64 site)
{
    return mg_hash_mix64(mg_hash_mix64(mg_hash_mix64(mg_hash_mix64(seed) ^ step) ^ micro) ^ site);
}

/* The 24-bit uniform of element i. */
MG_HASH_FN unsigned mg_hash_drop_u24(mg_hash_u64 stream, mg_hash_u64 i)
{
    return (unsigned)(mg_hash_mix64(stream ^ i) >> 40);
}

/* ceil(p·2^24) for p in [0, 1): element i is kept iff mg_hash_drop_u24(stream, i) >= it. */
MG_HASH_FN unsigned mg_hash_drop_threshold(double p)
{
    double x = p * 16777216.0;   /* exact: a power-of-two scaling */
    unsigned t = (unsigned)x;
    if ((double)t < x) t++;
    return t;
}

MG_HASH_FN float mg_hash_drop_scale(double p) { return (float)(1.0 / (1.0 - p)); }

#endif
