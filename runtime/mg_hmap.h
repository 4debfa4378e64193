/* mg_hmap: a hash map from byte strings to uint32 values (open addressing, keys copied into
 * an arena, entries kept in insertion order). The tokenizers' vocabularies, merge ranks and
 * caches all use it. */
#ifndef MG_HMAP_H
#define MG_HMAP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_hmap_ent {
    uint64_t hash;
    size_t off;      /* key bytes at keys + off */
    uint32_t len;
    uint32_t val;
} mg_hmap_ent;

typedef struct mg_hmap {
    uint32_t *slot;      /* 0 = empty, else entry index + 1 */
    size_t cap;          /* slots, a power of two */
    mg_hmap_ent *ent;    /* in insertion order */
    size_t n, ent_cap;
    char *keys;
    size_t keys_len, keys_cap;
} mg_hmap;

void mg_hmap_init(mg_hmap *m);
void mg_hmap_free(mg_hmap *m);
/* Drops every entry but keeps the memory. */
void mg_hmap_clear(mg_hmap *m);
/* Returns 1 and sets *val when key is present, else 0. */
int mg_hmap_get(const mg_hmap *m, const void *key, size_t len, uint32_t *val);
/* Inserts or overwrites. Returns 0, or -1 when out of memory (the map is unchanged). */
int mg_hmap_put(mg_hmap *m, const void *key, size_t len, uint32_t val);
/* The i-th inserted key. */
static inline const char *mg_hmap_key(const mg_hmap *m, size_t i, size_t *len)
{
    *len = m->ent[i].len;
    return m->keys + m->ent[i].off;
}

#ifdef __cplusplus
}
#endif
#endif
