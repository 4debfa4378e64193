-- bench-finegrained: the 'finegrained' shape of bench/mg_bench_layer.c (T=16384 tokens = train.batch x seq_len), so
-- `moegen tune specs/bench-finegrained.lua` tunes exactly what the layer benchmark times.
return {
  name = "bench-finegrained",
  model = { vocab = 32000, d_model = 2048, n_layer = 1, n_head = 16, seq_len = 2048 },
  moe   = { experts = 128, top_k = 8, d_ff = 768, activation = "swiglu", router = "softmax_topk",
            renormalize = true, aux_loss = 0.01, z_loss = 0.001 },
  dtype = "bf16",
  train = { batch = 8 },
}
