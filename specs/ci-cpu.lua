-- ci-cpu: what CI trains on the CPU: tiny-shakespeare at byte level (vocab 256), fp32,
-- one dense and one MoE layer (4 experts, top-2), grouped-query attention.
-- `make test` trains it (tests/test_train.c) and checks that the loss falls below a bound.
return {
  name = "ci-cpu",
  model = { vocab = 256, d_model = 64, n_layer = 2, n_head = 4, n_kv_head = 2, seq_len = 64,
            tie_embeddings = true, d_ff_dense = 128 },
  moe = { experts = 4, top_k = 2, d_ff = 64, activation = "swiglu", router = "softmax_topk",
          every = 2, aux_loss = 0.01, z_loss = 0.001 },
  dtype = "fp32",
  train = { data = "tinyshakespeare", batch = 8, lr = 1e-2, min_lr = 1e-3, warmup = 20,
            schedule = "cosine", steps = 300, weight_decay = 0.1, grad_clip = 1.0, dropout = 0,
            eval_every = 100, eval_batches = 8, seed = 1 },
}
