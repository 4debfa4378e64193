/* mg_ref_core: the fp64 inside of mg_ref, shared by the float API (mg_ref.c) and the
 * finite-difference check (mg_ref_check.c). Not part of the public interface.
 *
 * The model holds fp64 copies of the inputs, the state everything the forward computes
 * (in fp64, same layouts as mg_ref_fwd), the gradients their fp64 counterparts.
 */
#ifndef MG_REF_CORE_H
#define MG_REF_CORE_H

#include <stddef.h>

#include "mg_ref.h"
#include "mg_spec.h"   /* mg_act, mg_router */

typedef struct mg_ref_model {
    mg_ref_cfg c;
    int F2, S;
    int has_bias;                         /* bias is all zeros when 0 */
    double *x, *wg, *bias, *w_up, *w_dn, *ws_up, *ws_dn;
} mg_ref_model;

typedef struct mg_ref_state {
    double *logits;     /* [T,E] */
    double *score;      /* [T,E] softmax p or sigmoid s: what weights are taken from */
    double *probs;      /* [T,E] p of the aux loss */
    double *lse;        /* [T] logsumexp of the logits */
    int    *topk_idx;   /* [T,k] */
    double *topk_w;     /* [T,k] */
    double *wsum;       /* [T] renormalization divisor (1 when not renormalizing) */
    int    *counts, *counts_all, *offsets, *perm, *slot_of;
    int     n_dropped;
    double *a, *h, *z;  /* routed slots, slot order: [T*k,F2], [T*k,ff], [T*k,d] */
    double *sa, *sh;    /* shared experts, row t*S+s: [T*S,F2], [T*S,ff] */
    double *y;          /* [T,d] */
    double  aux, zloss;
    double  entropy_sum, top1_sum;
} mg_ref_state;

typedef struct mg_ref_dgrads {
    double *dx, *dwg, *dw_up, *dw_dn, *dws_up, *dws_dn, *dlogits;
} mg_ref_dgrads;

void  mg_ref_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void *mg_ref_calloc(size_t n, size_t size);
void  mg_ref_check_cfg(const mg_ref_cfg *c, const char *fn);
int   mg_ref_capacity(const mg_ref_cfg *c);
double mg_ref_sigmoid(double v);

void mg_ref_model_alloc(const mg_ref_cfg *c, mg_ref_model *m);   /* zeroed */
void mg_ref_model_free(mg_ref_model *m);
void mg_ref_state_alloc(const mg_ref_model *m, mg_ref_state *st);
void mg_ref_state_free(mg_ref_state *st);
void mg_ref_dgrads_alloc(const mg_ref_model *m, mg_ref_dgrads *g);
void mg_ref_dgrads_free(mg_ref_dgrads *g);

/* Forward in fp64. topk_idx non-NULL imposes that selection instead of computing one;
 * full = 0 stops after routing, dispatch and the losses. */
void mg_ref_forward_d(const mg_ref_model *m, mg_ref_state *st, const int *topk_idx, int full);
/* L = Σ y·dy + aux + zloss of a full forward. */
double mg_ref_loss_d(const mg_ref_model *m, const mg_ref_state *st, const double *dy);
/* Gradients of mg_ref_loss_d at st (which must come from a full forward of m). */
void mg_ref_backward_d(const mg_ref_model *m, const mg_ref_state *st, const double *dy,
                       mg_ref_dgrads *g);

#endif
