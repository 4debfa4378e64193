-- sweep-experts: one point of an expert-count sweep, built from the built-in tiny base.
-- Change `experts` (or generate copies of this file) to sweep; the rest follows:
--   * total expert width is held fixed, so d_ff shrinks as experts grow (fine-grained MoE),
--   * top_k grows with experts to keep the active width (and FLOPs) constant,
--   * d_ff is rounded to the kernels' vector width of 16.
local experts = 16
local total_width = 256          -- experts * d_ff, held constant across the sweep
local active_width = 128         -- top_k * d_ff, held constant across the sweep

local d_ff = math.max(16, (total_width // experts) // 16 * 16)

return moegen.extend(moegen.base("tiny"), {
  name = "sweep-experts-" .. experts,
  moe = { experts = experts, d_ff = d_ff, top_k = math.max(1, active_width // d_ff) },
  train = { steps = 400 },
})
