-- ep-capacity: a model whose experts do not fit on one 80 GB H100 with their AdamW state, and
-- half of them do (issue 6: expert parallelism over 2 GPUs, `moegen train SPEC --gpus 2`).
-- 5.8 B parameters, 5.5 B of them in 10 × 16 experts of 34.6 M. The GPU trainer keeps 18 bytes
-- per parameter (fp32 master, grad, AdamW m and v, bf16 copy): 104 GB on one GPU, 54 GB per GPU
-- with ep = 2 (0.24 B dense + 2.77 B of experts) plus activations of 4 × 256 tokens per rank.
return {
  name = "ep-capacity",
  model = { vocab = 33278, d_model = 2048, n_layer = 10, n_head = 16, n_kv_head = 16, seq_len = 256,
            tie_embeddings = true },
  moe   = { experts = 16, top_k = 2, d_ff = 5632, activation = "swiglu", router = "softmax_topk",
            renormalize = true, capacity_factor = 0, aux_loss = 0.01, z_loss = 0.001, every = 1 },
  dtype = "bf16",
  train = { data = "wikitext-2", batch = 8, lr = 3e-4, warmup = 10, schedule = "cosine", steps = 30,
            dropout = 0, eval_every = 1000, eval_batches = 1, seed = 1 },
  parallel = { dp = 1, ep = 2 },
}
