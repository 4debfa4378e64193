/* mg_rng: a small deterministic generator (splitmix64) for test data and init. */
#ifndef MG_RNG_H
#define MG_RNG_H
#include <math.h>
#include <stdint.h>

typedef struct mg_rng { uint64_t s; } mg_rng;

static inline void mg_rng_seed(mg_rng *r, uint64_t seed) { r->s = seed * 0x9E3779B97F4A7C15ull + 1; }
static inline uint64_t mg_rng_u64(mg_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* uniform in [0, 1) */
static inline double mg_rng_unif(mg_rng *r) { return (mg_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }
/* standard normal (Box-Muller) */
static inline double mg_rng_normal(mg_rng *r)
{
    double u = mg_rng_unif(r), v = mg_rng_unif(r);
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}
#endif
