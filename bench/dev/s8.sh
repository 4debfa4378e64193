#!/bin/bash
# s8: one GPU call for session 8's Hopper GEMM work (bench/NOTES.md, "v11"); every candidate is a
# device knob (env MOEGEN_JIT_DEFINES, runtime/mg_jit.c), so one call A/Bs it. (MG_WG_TMA_SPREAD,
# spr's knob, was removed after call 2: up wgrad slower with it; there it is now a no-op; so is
# pf's MG_WG_EPI_PF, removed after call 3: down dgrad 3.79 ms at 4 against 3.65 at 3; and stg's
# MG_WG_STAGGER, removed after call 5: every kernel slower with it. MG_WG_PROD_ILP (ilp, spr, pf:
# the up fwd rows in registers) and MG_WG_EPI_FULL (full) became the only paths after call 7, so
# their 0 settings are no-ops too. wgsmem's MG_WG_EPI_SMEM_WG was removed in session 9 after its call 1:
# level.)
# usage: bench/dev/s8.sh [ilp] [spr] [pf] [stg] [wg128] [full] [wgsmem] [src] ...   from the repo root after `make -j all bench`; logs under
# $OUT. nvidia-smi samples clocks, power and throttle reasons every 200 ms into smi.csv (marks.txt:
# when each step started). Steps have timeouts cut to what is left of LIMIT.
set -u
O=${OUT:-/tmp/s8}; mkdir -p "$O"
export MOEGEN_CACHE_DIR=${MOEGEN_CACHE_DIR:-/tmp/moegen-cache} NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-520} LIMIT=${LIMIT:-570}
BENCH_RUNS=20 ST_T=120 ST_SEED=41
. "$(dirname "$0")/call_lib.sh"   # note, step, bench, st, prof, ncu_src, smi_sample; T0, S
smi_sample
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)  $(cat COMMIT 2>/dev/null || git rev-parse --short HEAD)"
PH=" ${*:-ilp} "
if [[ $PH == *" ilp "* ]]; then   # up fwd's rows in registers (MG_WG_PROD_ILP), producer registers (MG_WG_PROD_REGS / CONS_REGS)
B="-DMG_WG_PROD_ILP=0"; R72="-DMG_WG_PROD_REGS=72 -DMG_WG_CONS_REGS=216"; R80="-DMG_WG_PROD_REGS=80 -DMG_WG_CONS_REGS=216"
st ilp "" tiny
st r72 "$R72" tiny
st r72coop "$R72 -DMG_WG_PINGPONG=0" tiny
st r72 "$R72" bench-small
for i in 1 2; do
    bench base mixtral MOEGEN_JIT_DEFINES="$B"
    bench ilp mixtral
    bench r72 mixtral MOEGEN_JIT_DEFINES="$R72"
    bench r80 mixtral MOEGEN_JIT_DEFINES="$R80"
done
for sh in olmoe finegrained small; do
    bench base $sh MOEGEN_JIT_DEFINES="$B"
    bench ilp $sh
    bench r72 $sh MOEGEN_JIT_DEFINES="$R72"
done
prof base "$B"
prof ilp ""
prof r72 "$R72"
fi
if [[ $PH == *" spr "* ]]; then   # B's boxes from all producer warps (MG_WG_TMA_SPREAD), with 56 / 72 / 88 producer registers
B="-DMG_WG_PROD_ILP=0 -DMG_WG_TMA_SPREAD=0"; R72="-DMG_WG_PROD_REGS=72 -DMG_WG_CONS_REGS=216"; R88="-DMG_WG_PROD_REGS=88 -DMG_WG_CONS_REGS=208"
st s56 "" tiny
st s88 "$R88" tiny
st s88coop "$R88 -DMG_WG_PINGPONG=0" tiny
st s88 "$R88" bench-small
st s88 "$R88" switch-cf125
for i in 1 2; do
    bench base mixtral MOEGEN_JIT_DEFINES="$B"
    bench s56 mixtral
    bench s72 mixtral MOEGEN_JIT_DEFINES="$R72"
    bench s88 mixtral MOEGEN_JIT_DEFINES="$R88"
    bench n88 mixtral MOEGEN_JIT_DEFINES="$R88 -DMG_WG_TMA_SPREAD=0"
done
for sh in olmoe finegrained small; do
    bench base $sh MOEGEN_JIT_DEFINES="$B"
    bench s72 $sh MOEGEN_JIT_DEFINES="$R72"
    bench s88 $sh MOEGEN_JIT_DEFINES="$R88"
done
prof s72 "$R72"
prof s88 "$R88"
prof n88 "$R88 -DMG_WG_TMA_SPREAD=0"
fi
if [[ $PH == *" pf "* ]]; then   # the register split as default (88 / 208 for cp.async producers), down dgrad's a loads PF - 1 chunks ahead (MG_WG_EPI_PF)
B="-DMG_WG_PROD_ILP=0 -DMG_WG_PROD_REGS=56 -DMG_WG_CONS_REGS=224"
st def "" tiny
st defcoop "-DMG_WG_PINGPONG=0" tiny
st pf4 "-DMG_WG_EPI_PF=4" tiny
st def "" bench-small
st def "" switch-cf125
for i in 1 2; do
    bench base mixtral MOEGEN_JIT_DEFINES="$B"
    bench def mixtral
    bench pf4 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_EPI_PF=4
done
for sh in olmoe finegrained small; do
    bench base $sh MOEGEN_JIT_DEFINES="$B"
    bench def $sh
    bench pf4 $sh MOEGEN_JIT_DEFINES=-DMG_WG_EPI_PF=4
done
prof def ""
prof pf4 "-DMG_WG_EPI_PF=4"
fi
if [[ $PH == *" stg "* ]]; then   # the CTAs' start staggered by (b % 4) · n cycles (MG_WG_STAGGER)
st stg10k "-DMG_WG_STAGGER=10000" tiny
for i in 1 2; do
    bench def mixtral
    bench stg10k mixtral MOEGEN_JIT_DEFINES=-DMG_WG_STAGGER=10000
    bench stg20k mixtral MOEGEN_JIT_DEFINES=-DMG_WG_STAGGER=20000
done
for sh in olmoe finegrained small; do
    bench def $sh
    bench stg10k $sh MOEGEN_JIT_DEFINES=-DMG_WG_STAGGER=10000
done
prof def ""
prof stg10k "-DMG_WG_STAGGER=10000"
prof stg20k "-DMG_WG_STAGGER=20000"
fi
if [[ $PH == *" wg128 "* ]]; then   # up wgrad at 128 x 128 (ping-pong consumers) on the new producer
st wg128 "-DMG_WG_BN_UP_WGRAD=128" tiny
for i in 1 2; do
    bench def mixtral
    bench wg128 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_BN_UP_WGRAD=128
done
prof wg128 "-DMG_WG_BN_UP_WGRAD=128"
fi
if [[ $PH == *" full "* ]]; then   # the fp32 register epilogues' unchecked stores for whole half-tiles (MG_WG_EPI_FULL)
st def "" tiny
st defcoop "-DMG_WG_PINGPONG=0" tiny
st def "" bench-small
st def "" switch-cf125
for i in 1 2; do
    bench def mixtral
    bench full0 mixtral MOEGEN_JIT_DEFINES=-DMG_WG_EPI_FULL=0
done
prof def ""
fi
if [[ $PH == *" wgsmem "* ]]; then   # up wgrad's dW through the consumer scratch (MG_WG_EPI_SMEM_WG; written without a GPU)
W=-DMG_WG_EPI_SMEM_WG=1
st wgsmem "$W" tiny
st wgsmemcoop "$W -DMG_WG_PINGPONG=0" tiny
st wgsmem "$W" bench-small
st wgsmem "$W" switch-cf125
for i in 1 2; do
    bench def mixtral
    bench wgsmem mixtral MOEGEN_JIT_DEFINES=$W
done
for sh in olmoe finegrained small; do
    bench def $sh
    bench wgsmem $sh MOEGEN_JIT_DEFINES=$W
done
prof def ""
prof wgsmem "$W"
fi
if [[ $PH == *" src "* ]]; then   # where the warps of Mixtral's slow GEMMs stall, per SASS line (SRC_D: defines)
ncu_src ${SRC_K:-"upwgrad|up_swiglu.*_wgrad" "dndgrad|down_swiglu.*_dgrad"}
fi
note "total $(( $(date +%s) - T0 ))s"
