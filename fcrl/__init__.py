"""fcrl: function-calling language models trained with EGPO (GRPO + clipped entropy bonus) in JAX."""
