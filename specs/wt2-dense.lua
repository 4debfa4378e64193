-- wt2-dense: the FLOP-matched dense twin of wt2-moe8. No MoE layer (moe.every = 0); each
-- layer's FFN is as wide as the two experts a wt2-moe8 token visits (2 x 1024).
-- The moe table stays: it is still validated, and it is what d_ff_dense is matched to.
return {
  name = "wt2-dense",
  model = { vocab = 33278, d_model = 512, n_layer = 8, n_head = 8, n_kv_head = 8, seq_len = 256, tie_embeddings = true,
            d_ff_dense = 2048 },
  moe   = { experts = 8, top_k = 2, d_ff = 1024, activation = "swiglu", every = 0 },
  dtype = "bf16",
  train = { data = "wikitext-2", batch = 64, lr = 1e-3, warmup = 100, schedule = "cosine", steps = 4000, dropout = 0.2, seed = 1 },
  parallel = { dp = 1, ep = 1 },
}
