-- switch-cf125: Switch Transformer style routing: one expert per token (top-1), a fixed
-- capacity of 1.25x the fair share per expert (overflow tokens skip the FFN), ReLU experts.
return {
  name = "switch-cf125",
  model = { vocab = 33278, d_model = 512, n_layer = 8, n_head = 8, seq_len = 256 },
  moe   = { experts = 16, top_k = 1, d_ff = 2048, activation = "relu", router = "switch",
            capacity_factor = 1.25, aux_loss = 0.01, z_loss = 0.001 },
  dtype = "bf16",
  train = { data = "wikitext-2", batch = 64, lr = 1e-3, warmup = 100, steps = 4000, dropout = 0.1 },
}
