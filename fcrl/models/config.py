"""The architecture, read only from an HF `config.json` (no field is declared twice)."""

import dataclasses
from typing import Any

FAMILIES = ("llama", "qwen2", "qwen3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Frozen, hashable architecture of a Llama / Qwen2 / Qwen3 decoder.

    `dtype` (compute), `param_dtype` and `remat` are run-time choices, not part of config.json.
    `remat`: the backward pass recomputes each layer's activations and each attention block's
    scores instead of keeping them (long sequences: memory for about a third more compute).
    """

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    # Llama 3 rope scaling: (factor, low_freq_factor, high_freq_factor, original_max_positions).
    rope_llama3: tuple[float, float, float, int] | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    @classmethod
    def from_hf(cls, d: dict[str, Any], source: str = "config.json", **overrides) -> "ModelConfig":
        """Builds the config from a parsed HF config.json; errors name `source` and the field."""

        def get(key: str, default: Any = ...) -> Any:
            if key in d and d[key] is not None:
                return d[key]
            if default is ...:
                raise ValueError(f"{source}: required field '{key}' is missing")
            return default

        family = get("model_type")
        if family not in FAMILIES:
            raise ValueError(
                f"{source}: unsupported model_type '{family}' (supported: {', '.join(FAMILIES)})"
            )
        if get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: unsupported hidden_act '{d['hidden_act']}' (need 'silu')")
        if get("mlp_bias", False):
            raise ValueError(f"{source}: unsupported field value mlp_bias=true")
        if get("use_sliding_window", False):
            raise ValueError(f"{source}: unsupported field value use_sliding_window=true")
        # transformers 5 writes `rope_parameters`; older files have rope_theta + rope_scaling.
        rope = dict(get("rope_parameters", None) or get("rope_scaling", None) or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        rope_llama3 = None
        if rope_type == "llama3":
            try:
                rope_llama3 = (
                    float(rope["factor"]),
                    float(rope["low_freq_factor"]),
                    float(rope["high_freq_factor"]),
                    int(rope["original_max_position_embeddings"]),
                )
            except KeyError as e:
                raise ValueError(f"{source}: llama3 rope scaling lacks field {e}") from None
        elif rope_type != "default":
            raise ValueError(f"{source}: unsupported rope type '{rope_type}' (default, llama3)")
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        bias = bool(get("attention_bias", False))
        cfg = cls(
            family=family,
            vocab_size=int(get("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size")),
            num_layers=int(get("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(get("num_key_value_heads", heads)),
            head_dim=int(get("head_dim", hidden // heads)),
            rms_eps=float(get("rms_norm_eps")),
            rope_theta=float(rope.get("rope_theta", get("rope_theta", 10000.0))),
            max_position_embeddings=int(get("max_position_embeddings")),
            tie_embeddings=bool(get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases and no o bias; Llama and Qwen3 use attention_bias.
            qkv_bias=True if family == "qwen2" else bias,
            o_bias=False if family == "qwen2" else bias,
            qk_norm=family == "qwen3",
            rope_llama3=rope_llama3,
        )
        if cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(
                f"{source}: num_attention_heads={heads} is not a multiple of "
                f"num_key_value_heads={cfg.num_kv_heads}"
            )
        return dataclasses.replace(cfg, **overrides)

    def to_hf(self) -> dict[str, Any]:
        """The architecture fields of an HF config.json that transformers reads back as this."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_llama3:
            factor, low, high, orig = self.rope_llama3
            rope.update(
                rope_type="llama3",
                factor=factor,
                low_freq_factor=low,
                high_freq_factor=high,
                original_max_position_embeddings=orig,
            )
        arch = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[self.family]
        d = {
            "architectures": [f"{arch}ForCausalLM"],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_embeddings,
            "dtype": self.param_dtype,
        }
        if self.family != "qwen2":
            d["attention_bias"] = self.qkv_bias
        return d
