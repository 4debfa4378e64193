-- dp-large: a model that keeps one H100 busy, for the data-parallel throughput check
-- (bench/dist_2gpu.sh): d_model 2048, 16 experts top-2 in every layer, ~1.0 B parameters (fp32
-- master + grads + AdamW + bf16 copy: ~17 GB), micro-batches of 32 x 1024 tokens. grad_accum = 2
-- makes one GPU run the same global batch (64 x 1024) that two GPUs run as one micro-batch each.
return {
  name = "dp-large",
  model = { vocab = 33278, d_model = 2048, n_layer = 8, n_head = 16, n_kv_head = 16, seq_len = 1024,
            tie_embeddings = true },
  moe   = { experts = 16, top_k = 2, d_ff = 1024, activation = "swiglu", router = "softmax_topk", renormalize = true,
            capacity_factor = 0, aux_loss = 0.01, z_loss = 0.001, every = 1 },
  dtype = "bf16",
  train = { data = "wikitext-2", batch = 32, grad_accum = 2, lr = 3e-4, warmup = 10, schedule = "cosine",
            steps = 1000, dropout = 0, eval_every = 1000, eval_batches = 2, seed = 1 },
}
