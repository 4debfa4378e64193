-- olmoe-1b-7b: the OLMoE-1B-7B shape: 64 small experts, 8 active (6.9B parameters, 1.3B active).
return {
  name = "olmoe-1b-7b",
  model = { vocab = 50304, d_model = 2048, n_layer = 16, n_head = 16, seq_len = 4096,
            tie_embeddings = false },
  moe   = { experts = 64, top_k = 8, d_ff = 1024, activation = "swiglu", router = "softmax_topk",
            renormalize = false, aux_loss = 0.01, z_loss = 0.001 },
  dtype = "bf16",
  train = { batch = 4, lr = 4e-4, min_lr = 4e-5, warmup = 2000, steps = 100000 },
  parallel = { dp = 8, ep = 8, zero = 1 },
}
