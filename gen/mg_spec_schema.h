/* mg_spec_schema: the table of every spec field, shared by the reader and the canonical dump. */
#ifndef MG_SPEC_SCHEMA_H
#define MG_SPEC_SCHEMA_H

#include <stddef.h>

typedef enum {
    MG_SPEC_INT, MG_SPEC_NUM, MG_SPEC_BOOL, MG_SPEC_STR, MG_SPEC_ENUM, MG_SPEC_TABLE
} mg_spec_kind;

/* Defaults that depend on other fields; resolved after the whole table was read. */
typedef enum {
    MG_SPEC_DEF_PLAIN = 0,  /* `def` below */
    MG_SPEC_DEF_REQUIRED,   /* no default: missing is an error */
    MG_SPEC_DEF_NAME,       /* the file stem */
    MG_SPEC_DEF_N_KV_HEAD,  /* model.n_head */
    MG_SPEC_DEF_D_FF_DENSE, /* moe.d_ff * moe.top_k */
    MG_SPEC_DEF_MIN_LR      /* train.lr / 10 */
} mg_spec_def;

typedef struct mg_spec_field {
    const char *name;
    mg_spec_kind kind;
    size_t off;                       /* offsetof(mg_spec, ...) */
    size_t size;                      /* MG_SPEC_STR: buffer size */
    mg_spec_def def_kind;
    double def;                       /* numbers, bools (0/1), enums (index) */
    const char *def_str;              /* MG_SPEC_STR */
    const char *const *names;         /* MG_SPEC_ENUM: allowed values, indexed by the enum */
    int n_names;
    const struct mg_spec_field *sub;  /* MG_SPEC_TABLE: its fields, ended by a NULL name */
} mg_spec_field;

/* What a spec name may be, as said in messages. */
#define MG_SPEC_NAME_RULE "must match [A-Za-z0-9_-]+ (1 to 63 characters)"

/* The top level of a spec, ended by a NULL name. */
extern const mg_spec_field mg_spec_schema[];

#endif
