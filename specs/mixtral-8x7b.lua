-- mixtral-8x7b: the Mixtral 8x7B shape (46.7B parameters, 12.9B active per token).
-- Too big for one GPU to train; it is here to exercise the generator at real dimensions.
return {
  name = "mixtral-8x7b",
  model = { vocab = 32000, d_model = 4096, n_layer = 32, n_head = 32, n_kv_head = 8, seq_len = 4096,
            tie_embeddings = false, rope_theta = 1e6 },
  moe   = { experts = 8, top_k = 2, d_ff = 14336, activation = "swiglu", router = "softmax_topk",
            renormalize = true, aux_loss = 0.02, z_loss = 0 },
  dtype = "bf16",
  train = { batch = 1, lr = 3e-4, warmup = 2000, steps = 100000, grad_clip = 1.0 },
  parallel = { dp = 8, ep = 8, zero = 1 },
}
