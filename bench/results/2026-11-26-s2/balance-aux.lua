-- wt2-moe8: an 8-expert top-2 MoE language model on WikiText-2 (the reference example).
return {
  name = "wt2-moe8-aux",
  model = { vocab = 33278, d_model = 512, n_layer = 8, n_head = 8, n_kv_head = 8, seq_len = 256, tie_embeddings = true },
  moe   = { experts = 8, top_k = 2, d_ff = 1024, activation = "swiglu", router = "softmax_topk", renormalize = true,
            capacity_factor = 0 --[[0 = dropless]], aux_loss = 0.01, bias_update_rate = 0, z_loss = 0.001, every = 1, shared_experts = 0 },
  dtype = "bf16",
  train = { data = "wikitext-2", batch = 64, lr = 1e-3, warmup = 100, schedule = "cosine", steps = 4000, dropout = 0.2, seed = 1 },
  parallel = { dp = 1, ep = 1 },
}
