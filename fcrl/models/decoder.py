"""One decoder for Llama, Qwen2/2.5 and Qwen3: GQA, RoPE (Llama-3 scaling), SwiGLU, RMSNorm.

Family differences are config flags: q/k/v (and o) biases, q/k RMSNorm, tied embeddings.
Matmuls take parameters cast to the compute dtype and accumulate in float32
(`preferred_element_type`), which is also what makes bf16 fast on CPUs with AMX. "float32" in
the docstrings below means at least float32: a float64 model (for exactness tests) stays float64.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from fcrl.models.config import ModelConfig
from fcrl.sharding import constrain


def wide(dtype: jnp.dtype) -> jnp.dtype:
    """The dtype accumulations and normalisations run in: float32, or float64 for float64."""
    return jnp.promote_types(dtype, jnp.float32)


def dot(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum accumulating in float32, returned in `a`'s dtype."""
    acc = wide(a.dtype)
    return jnp.einsum(eq, a, b.astype(a.dtype), preferred_element_type=acc).astype(a.dtype)


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, scaled after casting back (as HF does)."""
    x32 = x.astype(wide(x.dtype))
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return w.astype(x.dtype).reshape((1,) * (x.ndim - 1) + w.shape) * y.astype(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> jax.Array:
    """Inverse frequencies [E/2], with Llama 3's wavelength-dependent scaling if configured."""
    inv_freq = 1.0 / cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2) / cfg.head_dim)
    if cfg.rope_llama3 is None:
        return inv_freq
    factor, low, high, orig = cfg.rope_llama3
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > orig / low, inv_freq / factor, inv_freq)
    smooth = (orig / wavelen - low) / (high - low)
    medium = (wavelen >= orig / high) & (wavelen <= orig / low)
    return jnp.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def apply_rope(x_BTNE: jax.Array, positions_BT: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates halves (HF's `rotate_half` layout) by position × frequency, in float32."""
    acc = wide(x_BTNE.dtype)
    angles_BTE = positions_BT[..., None].astype(acc) * inv_freq[None, None].astype(acc)
    cos, sin = jnp.cos(angles_BTE)[:, :, None], jnp.sin(angles_BTE)[:, :, None]
    x1, x2 = jnp.split(x_BTNE.astype(acc), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTNE.dtype)


def attention(
    q_BTHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array, mask_BTS: jax.Array
) -> jax.Array:
    """Grouped-query attention; kv head k serves query heads k·R..k·R+R-1. Softmax in float32.

    The R query heads of a kv head are folded into one row axis Q = R·T, so each (batch, kv
    head) pair is one [Q, E] × [E, S] matmul: far faster on CPU than a 5-d batched einsum.
    """
    b, t, h, e = q_BTHE.shape
    k = k_BSKE.shape[2]
    r = h // k
    q_BKQE = q_BTHE.reshape(b, t, k, r, e).transpose(0, 2, 3, 1, 4).reshape(b, k, r * t, e)
    k_BKSE, v_BKSE = k_BSKE.transpose(0, 2, 1, 3), v_BSKE.transpose(0, 2, 1, 3)
    scores_BKQS = jnp.einsum(
        "BKQE,BKSE->BKQS", q_BKQE, k_BKSE, preferred_element_type=wide(q_BTHE.dtype)
    ) / math.sqrt(e)
    scores_BKRTS = scores_BKQS.reshape(b, k, r, t, -1)
    # A finite floor keeps fully masked rows (left padding) free of NaN.
    floor = jnp.finfo(scores_BKRTS.dtype).min
    scores_BKRTS = jnp.where(mask_BTS[:, None, None], scores_BKRTS, floor)
    probs_BKQS = jax.nn.softmax(scores_BKRTS, axis=-1).astype(v_BSKE.dtype).reshape(b, k, r * t, -1)
    out_BKQE = dot("BKQS,BKSE->BKQE", probs_BKQS, v_BKSE)
    return out_BKQE.reshape(b, k, r, t, e).transpose(0, 3, 1, 2, 4).reshape(b, t, h, e)


def causal_attention(
    q_BTHE: jax.Array, k_BXKE: jax.Array, v_BXKE: jax.Array, mask_BX: jax.Array,
    offset: int = 0, remat: bool = False,
) -> jax.Array:  # fmt: skip
    """Causal attention of T queries, the last T of X = `offset` + T positions, over the keys
    `mask_BX` marks real: query t sees keys x ≤ offset + t.

    Query block i only meets keys up to its own end, skipping the blocks above the diagonal:
    about half the work of the full square, and no [B, T, X] mask is ever built (at most 16
    blocks, of at least 64 queries, keep the unrolled graph small). With `remat` the backward
    pass recomputes a block's scores, so no more than one block's are ever held.
    """
    t = q_BTHE.shape[1]
    block = max(64, -(-t // 16))
    one = jax.checkpoint(attention) if remat else attention
    outs = []
    for i in range(0, t, block):
        j = min(i + block, t)
        causal_TX = jnp.arange(offset + i, offset + j)[:, None] >= jnp.arange(offset + j)[None]
        mask_BTX = causal_TX[None] & mask_BX[:, None, : offset + j]
        outs.append(one(q_BTHE[:, i:j], k_BXKE[:, : offset + j], v_BXKE[:, : offset + j], mask_BTX))
    return jnp.concatenate(outs, axis=1)


def normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype: str) -> nnx.Param:
    return nnx.Param(0.02 * jax.random.normal(rngs.params(), shape, dtype))


class Layer(nnx.Module):
    """One transformer block: pre-norm attention and pre-norm SwiGLU MLP."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f, h, k, e, pd = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.param_dtype,
        )
        self.cfg = cfg
        self.attn_norm_D = nnx.Param(jnp.ones((d,), pd))
        self.q_DHE = normal(rngs, (d, h, e), pd)
        self.k_DKE = normal(rngs, (d, k, e), pd)
        self.v_DKE = normal(rngs, (d, k, e), pd)
        self.o_HED = normal(rngs, (h, e, d), pd)
        if cfg.qkv_bias:
            self.q_bias_HE = nnx.Param(jnp.zeros((h, e), pd))
            self.k_bias_KE = nnx.Param(jnp.zeros((k, e), pd))
            self.v_bias_KE = nnx.Param(jnp.zeros((k, e), pd))
        if cfg.o_bias:
            self.o_bias_D = nnx.Param(jnp.zeros((d,), pd))
        if cfg.qk_norm:
            self.q_norm_E = nnx.Param(jnp.ones((e,), pd))
            self.k_norm_E = nnx.Param(jnp.ones((e,), pd))
        self.mlp_norm_D = nnx.Param(jnp.ones((d,), pd))
        self.gate_DF = normal(rngs, (d, f), pd)
        self.up_DF = normal(rngs, (d, f), pd)
        self.down_FD = normal(rngs, (f, d), pd)

    def project_qkv(
        self, x_BTD: jax.Array, positions_BT: jax.Array, inv_freq: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries, keys and values of the normed residual, with RoPE applied."""
        cfg = self.cfg
        h_BTD = rms_norm(x_BTD, self.attn_norm_D[...], cfg.rms_eps)
        q_BTHE = dot("BTD,DHE->BTHE", h_BTD, self.q_DHE[...])
        k_BTKE = dot("BTD,DKE->BTKE", h_BTD, self.k_DKE[...])
        v_BTKE = dot("BTD,DKE->BTKE", h_BTD, self.v_DKE[...])
        return self.position_qkv(q_BTHE, k_BTKE, v_BTKE, positions_BT, inv_freq)

    def position_qkv(
        self, q_BTHE: jax.Array, k_BTKE: jax.Array, v_BTKE: jax.Array, positions_BT: jax.Array,
        inv_freq: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:  # fmt: skip
        """Biases, q/k norms and RoPE on the projected queries, keys and values."""
        cfg = self.cfg
        if cfg.qkv_bias:
            q_BTHE += self.q_bias_HE[...].astype(q_BTHE.dtype)[None, None]
            k_BTKE += self.k_bias_KE[...].astype(k_BTKE.dtype)[None, None]
            v_BTKE += self.v_bias_KE[...].astype(v_BTKE.dtype)[None, None]
        if cfg.qk_norm:
            q_BTHE = rms_norm(q_BTHE, self.q_norm_E[...], cfg.rms_eps)
            k_BTKE = rms_norm(k_BTKE, self.k_norm_E[...], cfg.rms_eps)
        q_BTHE = constrain(apply_rope(q_BTHE, positions_BT, inv_freq), "act_BTHE")
        k_BTKE = constrain(apply_rope(k_BTKE, positions_BT, inv_freq), "act_BTKE")
        return q_BTHE, k_BTKE, constrain(v_BTKE, "act_BTKE")

    def finish(self, x_BTD: jax.Array, attn_BTHE: jax.Array) -> jax.Array:
        """Output projection and residual, then the pre-norm SwiGLU MLP and residual."""
        cfg = self.cfg
        out_BTD = dot("BTHE,HED->BTD", attn_BTHE, self.o_HED[...])
        if cfg.o_bias:
            out_BTD += self.o_bias_D[...].astype(out_BTD.dtype)[None, None]
        x_BTD = constrain(x_BTD + out_BTD, "act_BTD")
        h_BTD = rms_norm(x_BTD, self.mlp_norm_D[...], cfg.rms_eps)
        gate_BTF = jax.nn.silu(dot("BTD,DF->BTF", h_BTD, self.gate_DF[...]))
        up_BTF = constrain(gate_BTF * dot("BTD,DF->BTF", h_BTD, self.up_DF[...]), "act_BTF")
        return constrain(x_BTD + dot("BTF,FD->BTD", up_BTF, self.down_FD[...]), "act_BTD")

    def __call__(
        self, x_BTD: jax.Array, positions_BT: jax.Array, mask_BT: jax.Array, inv_freq: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The block over a whole sequence; also returns its keys and values (a prompt's cache)."""
        q_BTHE, k_BTKE, v_BTKE = self.project_qkv(x_BTD, positions_BT, inv_freq)
        attn_BTHE = causal_attention(q_BTHE, k_BTKE, v_BTKE, mask_BT, remat=self.cfg.remat)
        return self.finish(x_BTD, attn_BTHE), k_BTKE, v_BTKE


class Decoder(nnx.Module):
    """Token ids → float32 logits. Layers are stacked on a leading L axis and run by `lax.scan`."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_VD = normal(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.param_dtype)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_layers(rngs: nnx.Rngs) -> Layer:
            return Layer(cfg, rngs)

        self.layers = make_layers(rngs)
        self.final_norm_D = nnx.Param(jnp.ones((cfg.hidden_size,), cfg.param_dtype))
        if not cfg.tie_embeddings:
            self.lm_head_DV = normal(rngs, (cfg.hidden_size, cfg.vocab_size), cfg.param_dtype)

    def embed(self, tokens_BT: jax.Array) -> jax.Array:
        """Embedding rows, gathered before casting to the compute dtype."""
        return constrain(self.embed_VD[...][tokens_BT].astype(self.cfg.dtype), "act_BTD")

    def hidden(
        self, tokens_BT: jax.Array, mask_BT: jax.Array, positions_BT: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Last-layer states (before the final norm) and every layer's keys and values.

        Args:
          tokens_BT: int token ids.
          mask_BT: True on real tokens; padding is neither attended to nor counted in positions.
          positions_BT: RoPE positions; by default the count of real tokens before each one.

        Returns:
          x_BTD, k_LBTKE, v_LBTKE (unused keys and values cost nothing: XLA drops them).
        """
        mask_BT = mask_BT.astype(bool)
        if positions_BT is None:
            positions_BT = jnp.maximum(jnp.cumsum(mask_BT, axis=1) - 1, 0)
        inv_freq = rope_frequencies(self.cfg)
        graphdef, layers = nnx.split(self.layers)

        def body(x_BTD: jax.Array, layer_state: nnx.State) -> tuple[jax.Array, tuple]:
            x_BTD, k_BTKE, v_BTKE = nnx.merge(graphdef, layer_state)(
                x_BTD, positions_BT, mask_BT, inv_freq
            )
            return x_BTD, (k_BTKE, v_BTKE)

        x_BTD, (k_LBTKE, v_LBTKE) = jax.lax.scan(self._remat(body), self.embed(tokens_BT), layers)
        return x_BTD, k_LBTKE, v_LBTKE

    def hidden_shared(
        self, prompt_PS: jax.Array, prompt_mask_PS: jax.Array, tokens_BN: jax.Array,
        mask_BN: jax.Array,
    ) -> tuple[jax.Array, jax.Array, tuple]:  # fmt: skip
        """`hidden` of B = P·G rows that continue P prompts (G consecutive rows a prompt) with
        each prompt run once: last-layer states of the prompts [P, S, D] and of the
        continuations [B, N, D], equal to `hidden` over each row's [prompt | continuation],
        and every layer's keys and values (k_LPSKE, v_LPSKE, k_LBNKE, v_LBNKE; unused ones
        cost nothing); under autodiff the G rows' gradients through their prompt add up."""
        p, s = prompt_PS.shape
        b, n = tokens_BN.shape
        g = b // p
        prompt_mask_PS, mask_BN = prompt_mask_PS.astype(bool), mask_BN.astype(bool)
        positions_PS = jnp.maximum(jnp.cumsum(prompt_mask_PS, axis=1) - 1, 0)
        lengths_B1 = jnp.repeat(prompt_mask_PS.sum(axis=1), g)[:, None]
        positions_BN = jnp.maximum(lengths_B1 + jnp.cumsum(mask_BN, axis=1) - 1, 0)
        # Row b's keys: its prompt's S, then its own N (query n sees keys x ≤ S + n).
        keys_BX = jnp.concatenate([jnp.repeat(prompt_mask_PS, g, axis=0), mask_BN], axis=1)
        inv_freq = rope_frequencies(self.cfg)
        graphdef, layers = nnx.split(self.layers)

        def body(carry: tuple, layer_state: nnx.State) -> tuple[tuple, tuple]:
            x_PSD, x_BND = carry
            layer = nnx.merge(graphdef, layer_state)
            x_PSD, k_PSKE, v_PSKE = layer(x_PSD, positions_PS, prompt_mask_PS, inv_freq)
            q_BNHE, k_BNKE, v_BNKE = layer.project_qkv(x_BND, positions_BN, inv_freq)
            k_BXKE = jnp.concatenate([jnp.repeat(k_PSKE, g, axis=0), k_BNKE], axis=1)
            v_BXKE = jnp.concatenate([jnp.repeat(v_PSKE, g, axis=0), v_BNKE], axis=1)
            attn_BNHE = causal_attention(q_BNHE, k_BXKE, v_BXKE, keys_BX, s, self.cfg.remat)
            x_BND = layer.finish(x_BND, attn_BNHE)
            return (x_PSD, x_BND), (k_PSKE, v_PSKE, k_BNKE, v_BNKE)

        carry = (self.embed(prompt_PS), self.embed(tokens_BN))
        (x_PSD, x_BND), kv = jax.lax.scan(self._remat(body), carry, layers)
        return x_PSD, x_BND, kv

    def _remat(self, body):
        """The scanned layer body under `jax.checkpoint`: its backward keeps the layer's weight
        matmul outputs and recomputes the rest (norms, activations, attention), or with
        `cfg.remat` recomputes everything from the layer's input. Keeping every activation
        instead held 2.5 GB more in SmolLM2's RL step, and was no faster (README, "Speed")."""
        keep_dots = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
        return jax.checkpoint(body, prevent_cse=False, policy=None if self.cfg.remat else keep_dots)

    def logits(self, x_BTD: jax.Array) -> jax.Array:
        """Final norm and output projection (the tied embedding or lm_head), in float32."""
        cfg = self.cfg
        x_BTD = rms_norm(x_BTD, self.final_norm_D[...], cfg.rms_eps)
        head_DV = self.embed_VD[...].T if cfg.tie_embeddings else self.lm_head_DV[...]
        logits_BTV = jnp.einsum(
            "BTD,DV->BTV",
            x_BTD,
            head_DV.astype(x_BTD.dtype),
            preferred_element_type=wide(x_BTD.dtype),
        )
        return constrain(logits_BTV, "act_BTV")

    def __call__(
        self, tokens_BT: jax.Array, mask_BT: jax.Array, positions_BT: jax.Array | None = None
    ) -> jax.Array:
        """Causal forward over a (left- or right-) padded batch → float32 logits [B, T, V]."""
        return self.logits(self.hidden(tokens_BT, mask_BT, positions_BT)[0])
