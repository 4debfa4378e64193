/* mg_hmap: byte-string keys to uint32 values with linear probing. */
#include "mg_hmap.h"

#include <stdlib.h>
#include <string.h>

static uint64_t hash_bytes(const void *p, size_t n)
{
    /* FNV-1a, then a final avalanche so the low bits (the slot index) mix well. */
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

void mg_hmap_init(mg_hmap *m) { memset(m, 0, sizeof *m); }

void mg_hmap_free(mg_hmap *m)
{
    free(m->slot);
    free(m->ent);
    free(m->keys);
    mg_hmap_init(m);
}

void mg_hmap_clear(mg_hmap *m)
{
    if (m->slot) memset(m->slot, 0, m->cap * sizeof *m->slot);
    m->n = 0;
    m->keys_len = 0;
}

/* The slot holding key, or the empty slot where it would go. */
static size_t find(const mg_hmap *m, const void *key, size_t len, uint64_t h)
{
    size_t mask = m->cap - 1, i = (size_t)h & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t s = m->slot[i];
        if (!s) return i;
        const mg_hmap_ent *e = &m->ent[s - 1];
        if (e->hash == h && e->len == len && !memcmp(m->keys + e->off, key, len)) return i;
    }
}

int mg_hmap_get(const mg_hmap *m, const void *key, size_t len, uint32_t *val)
{
    if (!m->n) return 0;
    uint32_t s = m->slot[find(m, key, len, hash_bytes(key, len))];
    if (!s) return 0;
    *val = m->ent[s - 1].val;
    return 1;
}

static int grow_slots(mg_hmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint32_t *slot = calloc(cap, sizeof *slot);
    if (!slot) return -1;
    free(m->slot);
    m->slot = slot;
    m->cap = cap;
    for (size_t i = 0; i < m->n; i++) {
        size_t j = (size_t)m->ent[i].hash & (cap - 1);
        while (slot[j]) j = (j + 1) & (cap - 1);
        slot[j] = (uint32_t)(i + 1);
    }
    return 0;
}

static int reserve(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

int mg_hmap_put(mg_hmap *m, const void *key, size_t len, uint32_t val)
{
    if (len > UINT32_MAX || m->n >= UINT32_MAX - 1) return -1;
    /* Keep the load at or below 1/2 so probes stay short. */
    if ((m->n + 1) * 2 > m->cap && grow_slots(m)) return -1;
    uint64_t h = hash_bytes(key, len);
    size_t i = find(m, key, len, h);
    if (m->slot[i]) { m->ent[m->slot[i] - 1].val = val; return 0; }
    if (reserve((void **)&m->ent, &m->ent_cap, m->n + 1, sizeof *m->ent) ||
        reserve((void **)&m->keys, &m->keys_cap, m->keys_len + len + 1, 1))
        return -1;
    if (len) memcpy(m->keys + m->keys_len, key, len);
    m->ent[m->n] = (mg_hmap_ent){.hash = h, .off = m->keys_len, .len = (uint32_t)len, .val = val};
    m->keys_len += len;
    m->slot[i] = (uint32_t)(++m->n);
    return 0;
}
