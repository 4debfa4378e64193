-- bench-small: the 'small' shape of bench/mg_bench_layer.c (T=16384 tokens = train.batch x seq_len), so
-- `moegen tune specs/bench-small.lua` tunes exactly what the layer benchmark times.
return {
  name = "bench-small",
  model = { vocab = 32000, d_model = 768, n_layer = 1, n_head = 6, seq_len = 2048 },
  moe   = { experts = 8, top_k = 2, d_ff = 3072, activation = "swiglu", router = "softmax_topk",
            renormalize = true, aux_loss = 0.01, z_loss = 0.001 },
  dtype = "bf16",
  train = { batch = 8 },
}
