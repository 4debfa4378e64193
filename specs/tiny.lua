-- tiny: the smallest useful MoE, for tests and quick runs on any GPU.
-- moegen.base("tiny") returns this same table; keep the two in step (test_spec checks).
return {
  name = "tiny",
  model = { vocab = 512, d_model = 64, n_layer = 2, n_head = 4, seq_len = 64, tie_embeddings = true },
  moe = { experts = 4, top_k = 2, d_ff = 64, activation = "swiglu", router = "softmax_topk" },
  dtype = "bf16",
  train = { data = "wikitext-2", batch = 8, lr = 1e-3, warmup = 10, steps = 200,
            eval_every = 50, eval_batches = 4, seed = 1 },
}
