"""fcrl: function-calling LMs trained with EGPO (GRPO + clipped CoT-entropy bonus) in JAX."""
