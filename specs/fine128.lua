-- fine128: a fine-grained MoE: 128 narrow experts (d_ff 768), 8 active per token.
return {
  name = "fine128",
  model = { vocab = 50304, d_model = 2048, n_layer = 16, n_head = 16, seq_len = 2048,
            tie_embeddings = false },
  moe   = { experts = 128, top_k = 8, d_ff = 768, activation = "swiglu", router = "softmax_topk",
            renormalize = true, aux_loss = 0.01, z_loss = 0.001 },
  dtype = "bf16",
  train = { batch = 8, lr = 4e-4, warmup = 1000, steps = 50000 },
  parallel = { dp = 8, ep = 8 },
}
