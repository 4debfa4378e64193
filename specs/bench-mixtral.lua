-- bench-mixtral: the 'mixtral' shape of bench/mg_bench_layer.c (T=8192 tokens = train.batch x seq_len), so
-- `moegen tune specs/bench-mixtral.lua` tunes exactly what the layer benchmark times.
return {
  name = "bench-mixtral",
  model = { vocab = 32000, d_model = 4096, n_layer = 1, n_head = 32, seq_len = 2048 },
  moe   = { experts = 8, top_k = 2, d_ff = 14336, activation = "swiglu", router = "softmax_topk",
            renormalize = true, aux_loss = 0.01, z_loss = 0.001 },
  dtype = "bf16",
  train = { batch = 4 },
}
