/* mg_defaults: default spec constants so a template compiles standalone with nvcc.
 * Generated sources never include this file: the generator emits the same block with the
 * spec's values (see gen/mg_gen.c). Keep the names and types in sync with it. */
#ifndef MG_DEFAULTS_CUH
#define MG_DEFAULTS_CUH

static constexpr int MG_D = 512;        // d_model (multiple of 16)
static constexpr int MG_FF = 1024;      // expert d_ff (multiple of 16)
static constexpr int MG_F2 = 2048;      // width of W_up rows: 2*FF for GLU, FF otherwise
static constexpr int MG_E = 8;          // experts (1..256)
static constexpr int MG_TOPK = 2;       // 1..E
static constexpr int MG_ACT = 0;        // 0 swiglu 1 geglu 2 gelu 3 relu
static constexpr int MG_GLU = 1;
static constexpr int MG_ROUTER = 0;     // 0 softmax_topk 1 sigmoid_topk 2 switch
static constexpr int MG_RENORM = 1;
static constexpr int MG_CAPACITY = 0;   // 1 = capacity mode (capacity C passed at run time)
static constexpr float MG_CAPACITY_FACTOR = 0.0f;
static constexpr int MG_DROP_POLICY = 0;  // capacity mode: 0 position, 1 probability
static constexpr int MG_DTYPE = 0;      // 0 bf16 1 fp16 2 fp32
static constexpr int MG_SHARED = 0;     // shared experts
static constexpr float MG_AUX_COEF = 0.01f;
static constexpr float MG_Z_COEF = 0.001f;
// decoder-LM constants (templates/lm_*.cu)
static constexpr int MG_N_HEAD = 8;
static constexpr int MG_N_KV_HEAD = 8;  // divides MG_N_HEAD
static constexpr int MG_HEAD_DIM = 64;  // multiple of 8, <= 256
static constexpr int MG_VOCAB = 33278;
static constexpr int MG_SEQ = 256;      // model.seq_len (the longest sequence)
static constexpr double MG_ROPE_THETA = 10000.0;
static constexpr float MG_NORM_EPS = 1e-05f;
// tile (families up and down only; zero elsewhere)
static constexpr int MG_BM = 128, MG_BN = 128, MG_BK = 32, MG_STAGES = 3, MG_WARPS = 8;

#endif
