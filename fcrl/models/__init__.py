"""Decoder-only transformers (Llama, Qwen2/2.5, Qwen3) in Flax NNX, and their HF checkpoint I/O.

Dimension key used in every array name and einsum string of fcrl:
  B batch, G group, P prompts (groups of G rollouts: B = P·G rows), T tokens, S cache slots
  (a prompt's), N new (generated) tokens, L layers, D model width, H query heads, K kv heads,
  E head dim, F feed-forward width, V vocabulary;
  in attention, R query heads per kv head (H = K·R) and Q = R·T query rows of one kv head.
Parameters of `Decoder.layers` are stacked on a leading L axis; their names give the
per-layer shape (`q_DHE` is stored as [L, D, H, E]).
"""

from fcrl.models.config import ModelConfig
from fcrl.models.decoder import Decoder
from fcrl.models.hf import export_hf, load_hf, load_hf_config

__all__ = ["Decoder", "ModelConfig", "export_hf", "load_hf", "load_hf_config"]
