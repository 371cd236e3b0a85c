"""Rollouts: G sampled completions per prompt from a KV-cached decoder (where GRPO spends time).

  sampler = Sampler(model, SamplingConfig(num_samples=8, temperature=0.7), tokenizer, eos)
  rollouts = sampler.sample(state, [prompt_ids, ...], seed=0)

`prefill` runs the decoder once over the left-padded prompts [B, S] (S: the smallest length
bucket that fits) and keeps every layer's keys and values: the prompt cache [L, B, K, S, E],
read by all G rows of a prompt's group and never copied G times. `decode` is one
`lax.while_loop` over the B·G rows (prompt-major: row = prompt · G + sample): step t feeds every
row's token t, writes its key and value at slot t of the generated cache [L, B·G, K, N, E]
(donated, so updated in place) and samples token t + 1; its products use weights stored
[out, in] (`out_major`, made once a call: faster for a few rows on CPU). It exits once every
row has finished: an eos id, a stop string, or N = max_new_tokens tokens. With `compact`, it
exits early once at most a quarter of the prompts still run, and goes on over those prompts
only (`keep_prompts`). Parameters are arguments of the jitted functions, so new values of the
same shapes reuse the compiled programs.
"""

import collections
import contextlib
import dataclasses
import functools
import math
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx, struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fcrl.models import Decoder
from fcrl.models.decoder import Layer, rms_norm, rope_frequencies, wide
from fcrl.sharding import constrain, to_host

# Finish codes of `Rollouts.finish_B`; "format": the text can no longer open with
# `SamplingConfig.require_prefix`.
FINISH = ("running", "eos", "stop", "length", "format")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Every field is static: changing one compiles new programs."""

    num_samples: int = 1  # G rollouts per prompt
    max_new_tokens: int = 256  # N
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass, in (0, 1]; 1 = off
    top_k: int = 0  # keep the k likeliest tokens; 0 = off
    stop: tuple[str, ...] = ()  # stop strings, matched on the decoded text and kept in it
    buckets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)  # padded prompt lengths
    cache_dtype: str | None = None  # KV cache dtype; None = the model's compute dtype
    # Finish a row as soon as its text, leading whitespace aside, cannot open with this (e.g.
    # "<think>" where the verdict of any other opening is already no_think); "" = off.
    require_prefix: str = ""
    # Finish a row as soon as its text cannot open a BFCL call list (`call_automaton`): prose
    # that no continuation turns into an accepted call. Not with require_prefix.
    require_call: bool = False
    # Once at most a quarter of the prompts still have a running row, decode those prompts'
    # rows only, in a batch of the next power of two (one more decode program per size): a
    # few long rows no longer keep a wide batch decoding. The same tokens, row for row.
    compact: bool = False
    # Prompts prefilled and decoded together; more run in consecutive parts of this many (part
    # k's key folded in from the seed's): bounds the KV cache. 0 = all at once.
    max_prompts: int = 0

    def __post_init__(self) -> None:
        checks = {
            "num_samples": (self.num_samples >= 1, "must be >= 1"),
            "max_new_tokens": (self.max_new_tokens >= 1, "must be positive"),
            "temperature": (self.temperature >= 0, "must be >= 0"),
            "top_p": (0 < self.top_p <= 1, "must be in (0, 1]"),
            "top_k": (self.top_k >= 0, "must be >= 0"),
            "max_prompts": (self.max_prompts >= 0, "must be >= 0"),
            "stop": (all(self.stop), "must not hold an empty string"),
            "buckets": (bool(self.buckets) and min(self.buckets) > 0, "must be positive"),
            "cache_dtype": (self.cache_dtype in (None, "float32", "bfloat16"), "is not a dtype"),
            "require_call": (
                not (self.require_call and self.require_prefix),
                "cannot go with require_prefix",
            ),  # fmt: skip
        }
        for field, (ok, why) in checks.items():
            if not ok:
                raise ValueError(f"sampling.{field} {why}, got {getattr(self, field)!r}")


@struct.dataclass
class PromptCache:
    """Keys and values of the padded prompts, shared by each prompt's G rows."""

    k_LBKSE: jax.Array  # kv-head major, so attention reads it without a transpose
    v_LBKSE: jax.Array
    mask_BS: jax.Array
    lengths_B: jax.Array


@struct.dataclass
class DecodeState:
    """The while loop's carry; rows are prompt-major (row = prompt · G + sample)."""

    step: jax.Array  # tokens sampled so far: the index of the next one
    tokens_BN: jax.Array  # sampled ids, 0 after a row's end
    logprobs_BN: jax.Array  # log p(token) under logits / temperature, float32
    entropies_BN: jax.Array  # entropy of that distribution, float32
    lengths_B: jax.Array  # completion length once finished, else 0
    finish_B: jax.Array  # index into FINISH
    stop_state_B: jax.Array  # state of the stop-string automaton
    prefix_state_B: jax.Array  # state of the required-prefix automaton
    keys_B: jax.Array  # one PRNG key per row
    k_LBKNE: jax.Array  # generated cache, kv-head major
    v_LBKNE: jax.Array


@struct.dataclass
class Rollouts:
    """Sampled completions on the host, B·G rows, prompt-major."""

    prompt_BS: np.ndarray  # the row's prompt, left-padded to its bucket
    prompt_mask_BS: np.ndarray
    tokens_BN: np.ndarray  # completion ids (eos or stop token included), 0 after the end
    logprobs_BN: np.ndarray
    entropies_BN: np.ndarray
    lengths_B: np.ndarray
    finish_B: np.ndarray
    texts: tuple[str, ...] = struct.field(pytree_node=False)

    def rows(self) -> list[dict]:
        """One plain dict per row (for JSON)."""
        out = []
        for i, text in enumerate(self.texts):
            n = int(self.lengths_B[i])
            out.append(
                {
                    "prompt_ids": self.prompt_BS[i][self.prompt_mask_BS[i]].tolist(),
                    "token_ids": self.tokens_BN[i, :n].tolist(),
                    "text": text,
                    "logprobs": self.logprobs_BN[i, :n].tolist(),
                    "entropies": self.entropies_BN[i, :n].tolist(),
                    "length": n,
                    "finish_reason": FINISH[self.finish_B[i]],
                }
            )
        return out


# ---------------------------------------------------------------- stop strings as an automaton


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2 byte-level BPE's character for each byte, inverted (character → byte)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    rest = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + n) for n, b in enumerate(rest)})
    return {c: b for b, c in chars.items()}


def token_pieces(tokenizer: transformers.PreTrainedTokenizerBase, vocab_size: int) -> list[bytes]:
    """The bytes each id adds to the decoded text: b'' for special tokens and unused ids.

    Handles byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM2) and SentencePiece pieces ('▁' for a
    space, '<0x0A>' byte fallback).
    """
    alphabet = byte_level_alphabet()
    added = tokenizer.added_tokens_decoder.items()
    special = set(tokenizer.all_special_ids) | {i for i, t in added if t.special}
    pieces = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if piece is None or i in special:
            pieces.append(b"")
        elif all(c in alphabet for c in piece):
            pieces.append(bytes(alphabet[c] for c in piece))
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            pieces.append(bytes([int(piece[3:5], 16)]))
        else:
            pieces.append(piece.replace("\u2581", " ").encode())
    return (pieces + [b""] * vocab_size)[:vocab_size]


def byte_automaton(stops: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Aho–Corasick over bytes: next state [states, 256], and the states that end a stop string.

    Those states absorb: once a row has matched, it stays matched.
    """
    children: list[dict[int, int]] = [{}]
    accept = [False]
    for stop in stops:
        node = 0
        for byte in stop:
            if byte not in children[node]:
                children[node][byte] = len(children)
                children.append({})
                accept.append(False)
            node = children[node][byte]
        accept[node] = True
    delta = np.zeros((len(children), 256), np.int32)
    fail = [0] * len(children)
    queue = collections.deque([0])
    while queue:  # breadth first, so a node's failure state is complete before the node
        node = queue.popleft()
        if node:
            delta[node] = delta[fail[node]]
            accept[node] |= accept[fail[node]]
        for byte, child in children[node].items():
            fail[child] = delta[fail[node], byte] if node else 0
            delta[node, byte] = child
            queue.append(child)
    accept_S = np.asarray(accept)
    delta[accept_S] = np.flatnonzero(accept_S)[:, None]
    return delta, accept_S


def prefix_automaton(prefix: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Whether a text opens with `prefix` once leading whitespace is stripped (str.strip):
    next state [P + 2, 256] (i ≤ P: i bytes matched, P absorbs; P + 1: it cannot, absorbs),
    and that failed state. A non-ASCII byte before the prefix passes (it may be Unicode
    whitespace)."""
    p = len(prefix)
    delta = np.full((p + 2, 256), p + 1, np.int32)
    delta[p], delta[0, 128:] = p, p
    delta[0, [b for b in range(128) if chr(b).isspace()]] = 0
    for i, byte in enumerate(prefix):
        delta[i, byte] = i + 1
    return delta, np.arange(p + 2) == p + 1


def call_automaton() -> tuple[np.ndarray, np.ndarray]:
    """Whether a text can still open a call list as BFCL's prompt-mode decoder and ours read it:
    next state [states, 256] and the failed state. Both decoders take the text as a list (adding
    the brackets) and need its first element to be a call. A text fails for good where, after
    leading whitespace (Unicode's too) and backticks and an optional `[`, a name (`a.b`, spaces
    allowed) is followed by anything but `(`: prose ("You can…", "Sure,", "중지는 이름을"),
    `[not f()]`, ```` ```python ````; or where a number is followed by a space and a name
    ("1. In the game…"). Its verdicts are then fixed whatever follows: no call. Anything else
    that might open a call expression (`(`, a quote, `[`, `{`, `#`, `\\`) accepts for good, as
    does the first `(` after a name or a number (`1(x)` is a call to BFCL's decoder).
    States: 0 lead, 1 after `[`, 2 in a name, 3 after `.`, 4 after a name and space, 5 accepted,
    6 failed, 7 in a number, 8 after a number and space, 9… inside a leading Unicode space."""
    space = [b for b in range(128) if chr(b).isspace()]
    start = [b for b in range(256) if b >= 128 or chr(b).isalpha() or b == ord("_")]
    name = start + list(b"0123456789")
    digits = list(b"0123456789")
    opens = list(b"(\"'{.#\\")
    after_name = list(b"([#\\")
    delta = np.full((9, 256), 6, np.int32)
    delta[5], delta[6] = 5, 6
    for state, moves in {
        0: {2: start, 5: opens, 7: digits, 0: [*space, ord("`")], 1: [ord("[")]},
        1: {5: [*opens, *b"[]"], 2: start, 7: digits, 1: space},  # `[]`: no call; it ends
        2: {5: after_name, 2: name, 3: [ord(".")], 4: space},
        3: {5: list(b"#\\"), 2: start, 3: space},
        4: {5: after_name, 4: space, 3: [ord(".")]},
        7: {5: after_name, 7: [*name, ord(".")], 8: space},  # 1.5, 1e3, 0x1f, 2j
        8: {5: [*after_name, ord(".")], 8: space},
    }.items():
        for target, bytes_ in moves.items():
            delta[state, bytes_] = target
    # Leading Unicode whitespace, which our verifier strips: a trie over its UTF-8 bytes from
    # state 0 (back to 0 once a character is complete); any other non-ASCII character is a
    # name's (state 2), its mismatching byte read as state 2 reads it.
    chars = [chr(c).encode() for c in range(128, 0x3001) if chr(c).isspace()]
    trie = {}
    for char in chars:
        for i in range(1, len(char)):
            trie.setdefault(char[:i], 9 + len(trie))
    delta = np.concatenate([delta, np.repeat(delta[2:3], len(trie), axis=0)])
    for head, state in {b"": 0, **trie}.items():
        for byte in range(128, 256):
            ahead = head + bytes([byte])
            if ahead in trie:
                delta[state, byte] = trie[ahead]
            elif ahead in chars:
                delta[state, byte] = 0
    return delta, np.arange(len(delta)) == 6


def token_table(pieces: Sequence[bytes], delta: np.ndarray) -> np.ndarray:
    """A byte automaton lifted to tokens: next state [states, V] after each id's bytes."""
    lengths = np.asarray([len(p) for p in pieces])
    order = np.argsort(-lengths, kind="stable")  # ids by length: byte j's ids are a prefix
    bytes_VW = np.zeros((len(pieces), max(lengths.max(), 1)), np.uint8)
    for row, i in enumerate(order):
        bytes_VW[row, : lengths[i]] = np.frombuffer(pieces[i], np.uint8)
    state_SV = np.repeat(np.arange(len(delta), dtype=np.int32)[:, None], len(pieces), 1)
    for j in range(bytes_VW.shape[1]):
        n = int((lengths > j).sum())
        state_SV[:, :n] = delta[state_SV[:, :n], bytes_VW[None, :n, j]]
    table_SV = np.empty_like(state_SV)
    table_SV[:, order] = state_SV
    return table_SV


def stop_table(pieces: Sequence[bytes], stops: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The stop-string automaton lifted to tokens: next state [states, V]; accepting."""
    delta, accept_S = byte_automaton([s.encode() for s in stops])
    return token_table(pieces, delta), accept_S


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text up to the end of its earliest stop string (kept)."""
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return text[: min(ends)] if ends else text


# ---------------------------------------------------------------- sampling one token per row


def sample_logits(
    logits_BV: jax.Array, keys_B: jax.Array, sampling: SamplingConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Token, its log-probability, and the entropy, under logits / temperature (float32).

    Greedy (temperature 0) records the untempered distribution. Top-k, then top-p (on the
    renormalised top-k mass, as in transformers) only narrow what is sampled: the recorded
    log-probabilities stay those of the full tempered distribution, which the trainer recomputes.
    """
    t = sampling.temperature
    scaled_BV = logits_BV / t if t > 0 else logits_BV
    logp_BV = jax.nn.log_softmax(scaled_BV, axis=-1)
    entropy_B = -jnp.sum(jnp.exp(logp_BV) * logp_BV, axis=-1)
    if t == 0:
        # The argmax of logp, not of the logits: the same token, and with the vocabulary
        # sharded it avoids a vectorizer hang in XLA:CPU's LLVM seen with jax 0.10.2.
        tokens_B = jnp.argmax(logp_BV, axis=-1)
    else:
        if sampling.top_k or sampling.top_p < 1:
            if sampling.top_k:
                ranked_BK = jax.lax.top_k(scaled_BV, sampling.top_k)[0]
            else:
                ranked_BK = -jnp.sort(-scaled_BV, axis=-1)
            probs_BK = jax.nn.softmax(ranked_BK, axis=-1)
            before_BK = jnp.cumsum(probs_BK, axis=-1) - probs_BK  # mass of likelier tokens
            keep_B1 = jnp.sum(before_BK < sampling.top_p, axis=-1, keepdims=True)
            cutoff_B1 = jnp.take_along_axis(ranked_BK, keep_B1 - 1, axis=-1)
            scaled_BV = jnp.where(scaled_BV >= cutoff_B1, scaled_BV, -jnp.inf)
        # Inverse CDF: one uniform per row, not one Gumbel per vocabulary entry.
        cdf_BV = jnp.cumsum(jax.nn.softmax(scaled_BV, axis=-1), axis=-1)
        u_B1 = jax.vmap(jax.random.uniform)(keys_B)[:, None] * cdf_BV[:, -1:]
        tokens_B = jnp.minimum(jnp.sum(cdf_BV <= u_B1, axis=-1), scaled_BV.shape[-1] - 1)
    logprob_B = jnp.take_along_axis(logp_BV, tokens_B[:, None], axis=-1)[:, 0]
    return tokens_B.astype(jnp.int32), logprob_B, entropy_B


def advance(
    s: DecodeState,
    logits_BV: jax.Array,
    eos: jax.Array,
    stop_SV: jax.Array,
    accept_S: jax.Array,
    prefix_SV: jax.Array,
    failed_S: jax.Array,
    sampling: SamplingConfig,
) -> DecodeState:
    """Samples token `s.step` of every running row, records why rows finish, steps on."""
    n = s.step
    keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(s.keys_B, n)
    tokens_B, logprob_B, entropy_B = sample_logits(logits_BV, keys_B, sampling)
    running_B = s.finish_B == 0
    tokens_B = jnp.where(running_B, tokens_B, 0)
    stop_state_B = jnp.where(running_B, stop_SV[s.stop_state_B, tokens_B], s.stop_state_B)
    prefix_state_B = jnp.where(running_B, prefix_SV[s.prefix_state_B, tokens_B],
                               s.prefix_state_B)  # fmt: skip
    finish_B = jnp.select(
        [jnp.isin(tokens_B, eos), accept_S[stop_state_B], failed_S[prefix_state_B],
         n == sampling.max_new_tokens - 1],
        [FINISH.index("eos"), FINISH.index("stop"), FINISH.index("format"),
         FINISH.index("length")],
        0,
    )  # fmt: skip
    finish_B = jnp.where(running_B, finish_B, s.finish_B)

    def put(x_BN: jax.Array, x_B: jax.Array) -> jax.Array:
        x_B = jnp.where(running_B, x_B, 0).astype(x_BN.dtype)
        return jax.lax.dynamic_update_slice_in_dim(x_BN, x_B[:, None], n, axis=1)

    return s.replace(
        step=n + 1,
        tokens_BN=put(s.tokens_BN, tokens_B),
        logprobs_BN=put(s.logprobs_BN, logprob_B),
        entropies_BN=put(s.entropies_BN, entropy_B),
        lengths_B=jnp.where(running_B & (finish_B > 0), n + 1, s.lengths_B),
        finish_B=finish_B,
        stop_state_B=stop_state_B,
        prefix_state_B=prefix_state_B,
    )


# ---------------------------------------------------------------- the two jitted programs


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"))
def prefill(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_BS: jax.Array,
    mask_BS: jax.Array,
    key: jax.Array,
    eos: jax.Array,
    stop_SV: jax.Array,
    accept_S: jax.Array,
    prefix_SV: jax.Array,
    failed_S: jax.Array,
    sampling: SamplingConfig,
) -> tuple[PromptCache, DecodeState]:
    """Runs the prompts once, keeps their cache, and samples every row's first token."""
    model = nnx.merge(graphdef, state)
    x_BSD, k_LBSKE, v_LBSKE = model.hidden(prompt_BS, mask_BS)
    tables = (eos, stop_SV, accept_S, prefix_SV, failed_S)
    return start(model, x_BSD[:, -1:], k_LBSKE, v_LBSKE, mask_BS, key, tables, sampling)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"))
def prefill_shared(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prefix_PS: jax.Array,
    prefix_mask_PS: jax.Array,
    suffix_BQ: jax.Array,
    suffix_mask_BQ: jax.Array,
    key: jax.Array,
    eos: jax.Array,
    stop_SV: jax.Array,
    accept_S: jax.Array,
    prefix_SV: jax.Array,
    failed_S: jax.Array,
    sampling: SamplingConfig,
) -> tuple[PromptCache, DecodeState]:
    """`prefill` of B = P·M prompts [prefix | suffix], M consecutive prompts sharing each of P
    prefixes, with each prefix run once (Decoder.hidden_shared); the prompt cache holds the
    prefix's keys and values in every one of its prompts' rows."""
    model = nnx.merge(graphdef, state)
    m = suffix_BQ.shape[0] // prefix_PS.shape[0]
    _, x_BQD, (k_LPSKE, v_LPSKE, k_LBQKE, v_LBQKE) = model.hidden_shared(
        prefix_PS, prefix_mask_PS, suffix_BQ, suffix_mask_BQ
    )
    k_LBXKE, v_LBXKE = (jnp.concatenate([jnp.repeat(p, m, axis=1), q], axis=2)
                        for p, q in ((k_LPSKE, k_LBQKE), (v_LPSKE, v_LBQKE)))  # fmt: skip
    mask_BX = jnp.concatenate([jnp.repeat(prefix_mask_PS, m, axis=0), suffix_mask_BQ], axis=1)
    tables = (eos, stop_SV, accept_S, prefix_SV, failed_S)
    return start(model, x_BQD[:, -1:], k_LBXKE, v_LBXKE, mask_BX, key, tables, sampling)


def start(model: Decoder, last_B1D: jax.Array, k_LBSKE: jax.Array, v_LBSKE: jax.Array,
          mask_BS: jax.Array, key: jax.Array, tables: tuple,
          sampling: SamplingConfig) -> tuple[PromptCache, DecodeState]:  # fmt: skip
    """The prompt cache and the decode state after each row's first sampled token; `last_B1D`
    is the prompts' last (real: they are left-padded) state."""
    cfg, g, n = model.cfg, sampling.num_samples, sampling.max_new_tokens
    dtype = sampling.cache_dtype or cfg.dtype
    logits_BV = jnp.repeat(model.logits(last_B1D)[:, 0], g, axis=0)
    prompt = PromptCache(
        k_LBKSE=constrain(k_LBSKE.transpose(0, 1, 3, 2, 4).astype(dtype), "cache_LBKSE"),
        v_LBKSE=constrain(v_LBSKE.transpose(0, 1, 3, 2, 4).astype(dtype), "cache_LBKSE"),
        mask_BS=mask_BS,
        lengths_B=mask_BS.sum(axis=1),
    )
    rows = mask_BS.shape[0] * g
    cache_LBKNE = jnp.zeros((cfg.num_layers, rows, cfg.num_kv_heads, n, cfg.head_dim), dtype)
    zeros_BN = jnp.zeros((rows, n), jnp.float32)
    s = DecodeState(
        step=jnp.int32(0),
        tokens_BN=jnp.zeros((rows, n), jnp.int32),
        logprobs_BN=zeros_BN,
        entropies_BN=zeros_BN,
        lengths_B=jnp.zeros((rows,), jnp.int32),
        finish_B=jnp.zeros((rows,), jnp.int32),
        stop_state_B=jnp.zeros((rows,), jnp.int32),
        prefix_state_B=jnp.zeros((rows,), jnp.int32),
        keys_B=jax.random.split(key, rows),
        k_LBKNE=constrain(cache_LBKNE, "cache_LBKSE"),
        v_LBKNE=constrain(cache_LBKNE, "cache_LBKSE"),
    )
    return prompt, advance(s, logits_BV, *tables, sampling)


def cached_attention(
    q_BTHE: jax.Array,
    k_BTKE: jax.Array,
    v_BTKE: jax.Array,
    prompt_k_BKSE: jax.Array,
    prompt_v_BKSE: jax.Array,
    prompt_mask_BS: jax.Array,
    k_BKNE: jax.Array,
    v_BKNE: jax.Array,
    step: jax.Array,
) -> jax.Array:
    """One new token per row (T = 1) attending to its prompt, its first `step` tokens, itself.

    Here B·G rows meet B prompts: the G rows of a prompt read the same prompt cache, folded
    with the R query heads of a kv head into the rows of one matmul. One softmax over the
    three parts at once.
    """
    b, k, s, e = prompt_k_BKSE.shape
    rows, _, h, _ = q_BTHE.shape
    g, r, n = rows // b, h // k, k_BKNE.shape[2]
    # In float32 whatever the cache dtype: XLA:CPU has no bf16 × bf16 → f32 kernel for these
    # small batched matmuls (a bf16 cache still halves the cache's memory).
    f32 = jnp.float32
    q_BGKRE = q_BTHE.reshape(b, g, k, r, e).astype(f32)
    k_BGKNE, v_BGKNE = (x.reshape(b, g, k, n, e).astype(f32) for x in (k_BKNE, v_BKNE))
    k_BGKE, v_BGKE = (x.reshape(b, g, k, e).astype(f32) for x in (k_BTKE, v_BTKE))
    prompt_k_BKSE, prompt_v_BKSE = prompt_k_BKSE.astype(f32), prompt_v_BKSE.astype(f32)

    # The prompt part as one [G·R, E] × [E, S] matmul per (prompt, kv head): G kept apart from R
    # in these einsums makes XLA:CPU pick a layout 4× slower on long prompts.
    q_BKQE = q_BGKRE.transpose(0, 2, 1, 3, 4).reshape(b, k, g * r, e)

    def per_row(x_BKQX: jax.Array) -> jax.Array:
        return x_BKQX.reshape(b, k, g, r, -1).transpose(0, 2, 1, 3, 4)

    scores_BGKRX = jnp.concatenate(
        [
            per_row(jnp.einsum("BKQE,BKSE->BKQS", q_BKQE, prompt_k_BKSE)),
            jnp.einsum("BGKRE,BGKNE->BGKRN", q_BGKRE, k_BGKNE),
            jnp.einsum("BGKRE,BGKE->BGKR", q_BGKRE, k_BGKE)[..., None],
        ],
        axis=-1,
    ) / math.sqrt(e)
    valid_BX = jnp.concatenate(
        [prompt_mask_BS, jnp.broadcast_to(jnp.arange(n) < step, (b, n)), jnp.ones((b, 1), bool)],
        axis=1,
    )
    scores_BGKRX = jnp.where(
        valid_BX[:, None, None, None], scores_BGKRX, jnp.finfo(jnp.float32).min
    )
    probs_BGKRX = jax.nn.softmax(scores_BGKRX, axis=-1)
    p_prompt, p_new, p_self = jnp.split(probs_BGKRX, [s, s + n], axis=-1)
    p_BKQS = p_prompt.transpose(0, 2, 1, 3, 4).reshape(b, k, g * r, s)
    out_BGKRE = (
        per_row(jnp.einsum("BKQS,BKSE->BKQE", p_BKQS, prompt_v_BKSE))
        + jnp.einsum("BGKRN,BGKNE->BGKRE", p_new, v_BGKNE)
        + p_self * v_BGKE[:, :, :, None]
    )
    return out_BGKRE.reshape(rows, 1, h, e).astype(q_BTHE.dtype)


# ---------------------------------------------------------------- the decode step's products


def out_major(model: Decoder) -> tuple[dict[str, jax.Array], jax.Array]:
    """The decode step's weights in the compute dtype, each stored [out, in]: the layers'
    (q, k, v, o, gate, up, down; [L, out, in]) and the output head [V, D].

    XLA:CPU multiplies the few rows of a decode step (B·G) faster as w[out, in] · x[in, rows]
    than as x[rows, in] · w[in, out] (README, "Speed"). Made once a `decode` call (+ one copy of
    the layers' weights); the barrier keeps XLA from folding the transposes back into the
    products."""
    layers, cfg = model.layers, model.cfg

    def stored(w: jax.Array, inputs: int) -> jax.Array:  # [L, in..., out...] → [L, out, in]
        w = jnp.moveaxis(w, tuple(range(1, 1 + inputs)), tuple(range(-inputs, 0)))
        return w.reshape(w.shape[0], -1, math.prod(w.shape[w.ndim - inputs :]))

    w_L = {
        "q": stored(layers.q_DHE[...], 1),
        "k": stored(layers.k_DKE[...], 1),
        "v": stored(layers.v_DKE[...], 1),
        "o": stored(layers.o_HED[...], 2),
        "gate": stored(layers.gate_DF[...], 1),
        "up": stored(layers.up_DF[...], 1),
        "down": stored(layers.down_FD[...], 1),
    }
    head_VD = model.embed_VD[...] if cfg.tie_embeddings else model.lm_head_DV[...].T
    weights = jax.tree.map(lambda w: w.astype(cfg.dtype), (w_L, head_VD))
    return jax.lax.optimization_barrier(weights)


def times(w_OI: jax.Array, x_BI: jax.Array, dtype: jnp.dtype | None = None) -> jax.Array:
    """x · wᵀ for w stored [out, in], as (w · xᵀ)ᵀ accumulating in float32; returned in `dtype`
    (by default x's). The barriers keep XLA from turning it back into x · wᵀ."""
    x_IB = jax.lax.optimization_barrier(x_BI.T)
    y_OB = jnp.einsum("OI,IB->OB", w_OI, x_IB, preferred_element_type=wide(x_BI.dtype))
    return jax.lax.optimization_barrier(y_OB).T.astype(dtype or x_BI.dtype)


def decode_layer(
    layer: Layer, w: dict[str, jax.Array], x_BD: jax.Array, positions_BT: jax.Array,
    inv_freq: jax.Array, attend: Callable[..., jax.Array],
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:  # fmt: skip
    """One layer of a decode step (B rows, one token each) with its out-major weights `w`:
    Layer.project_qkv, `attend`, then Layer.finish. Returns the new residual, the token's key
    and value."""
    cfg, b = layer.cfg, x_BD.shape[0]
    h_BD = rms_norm(x_BD, layer.attn_norm_D[...], cfg.rms_eps)
    q_BTHE, k_BTKE, v_BTKE = layer.position_qkv(
        *(times(w[n], h_BD).reshape(b, 1, -1, cfg.head_dim) for n in "qkv"), positions_BT,
        inv_freq,
    )  # fmt: skip
    out_BD = times(w["o"], attend(q_BTHE, k_BTKE, v_BTKE).reshape(b, -1))
    if cfg.o_bias:
        out_BD += layer.o_bias_D[...].astype(out_BD.dtype)
    x_BD = x_BD + out_BD
    h_BD = rms_norm(x_BD, layer.mlp_norm_D[...], cfg.rms_eps)
    up_BF = jax.nn.silu(times(w["gate"], h_BD)) * times(w["up"], h_BD)
    return x_BD + times(w["down"], up_BF), (k_BTKE, v_BTKE)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "until"),
                   donate_argnames=("s",))  # fmt: skip
def decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt: PromptCache,
    s: DecodeState,
    eos: jax.Array,
    stop_SV: jax.Array,
    accept_S: jax.Array,
    prefix_SV: jax.Array,
    failed_S: jax.Array,
    sampling: SamplingConfig,
    until: int = 0,
) -> DecodeState:
    """Decodes until every row has finished, or until at most `until` prompts have a running
    row; `s` (with the generated cache) is donated."""
    model = nnx.merge(graphdef, state)
    inv_freq = rope_frequencies(model.cfg)
    layer_def, layers = nnx.split(model.layers)
    w_L, head_VD = out_major(model)
    lengths_B = jnp.repeat(prompt.lengths_B, sampling.num_samples)

    def cond(s: DecodeState) -> jax.Array:
        running = jnp.sum(jnp.any((s.finish_B == 0).reshape(-1, sampling.num_samples), axis=1))
        return (s.step < sampling.max_new_tokens) & (running > until)

    def body(s: DecodeState) -> DecodeState:
        t = s.step - 1  # feeds the last sampled token, t, and samples token t + 1
        positions_BT = (lengths_B + t)[:, None]

        def layer_step(x_BD: jax.Array, xs: tuple) -> tuple[jax.Array, tuple]:
            w, layer_state, prompt_k, prompt_v, k_BKNE, v_BKNE = xs
            attend = functools.partial(cached_attention, prompt_k_BKSE=prompt_k,
                                       prompt_v_BKSE=prompt_v, prompt_mask_BS=prompt.mask_BS,
                                       k_BKNE=k_BKNE, v_BKNE=v_BKNE, step=t)  # fmt: skip
            layer = nnx.merge(layer_def, layer_state)
            return decode_layer(layer, w, x_BD, positions_BT, inv_freq, attend)

        x_BD = model.embed(jax.lax.dynamic_slice_in_dim(s.tokens_BN, t, 1, axis=1))[:, 0]
        xs = (w_L, layers, prompt.k_LBKSE, prompt.v_LBKSE, s.k_LBKNE, s.v_LBKNE)
        x_BD, (k_LBTKE, v_LBTKE) = jax.lax.scan(layer_step, x_BD, xs)
        at = (0, 0, 0, t, 0)
        s = s.replace(
            k_LBKNE=jax.lax.dynamic_update_slice(s.k_LBKNE, new_kv(k_LBTKE, s.k_LBKNE.dtype), at),
            v_LBKNE=jax.lax.dynamic_update_slice(s.v_LBKNE, new_kv(v_LBTKE, s.v_LBKNE.dtype), at),
        )
        x_BD = rms_norm(x_BD, model.final_norm_D[...], model.cfg.rms_eps)
        logits_BV = times(head_VD, x_BD, wide(x_BD.dtype))
        return advance(s, logits_BV, eos, stop_SV, accept_S, prefix_SV, failed_S, sampling)

    def new_kv(x_LBTKE: jax.Array, dtype: jnp.dtype) -> jax.Array:
        return x_LBTKE.transpose(0, 1, 3, 2, 4).astype(dtype)  # [L, B, K, 1, E]

    return jax.lax.while_loop(cond, body, s)


@functools.partial(jax.jit, static_argnames=("g",))
def keep_prompts(prompt: PromptCache, s: DecodeState, keep_P: jax.Array,
                 g: int) -> tuple[PromptCache, DecodeState]:  # fmt: skip
    """The prompt cache and decode state of prompts `keep_P` (and their G rows each) only."""
    rows = (keep_P[:, None] * g + jnp.arange(g)[None]).reshape(-1)
    prompt = PromptCache(k_LBKSE=prompt.k_LBKSE[:, keep_P], v_LBKSE=prompt.v_LBKSE[:, keep_P],
                         mask_BS=prompt.mask_BS[keep_P],
                         lengths_B=prompt.lengths_B[keep_P])  # fmt: skip
    by_row = {f.name: getattr(s, f.name)[rows] for f in dataclasses.fields(s)
              if f.name not in ("step", "k_LBKNE", "v_LBKNE")}  # fmt: skip
    return prompt, s.replace(k_LBKNE=s.k_LBKNE[:, rows], v_LBKNE=s.v_LBKNE[:, rows], **by_row)


# ---------------------------------------------------------------- the host side


class Sampler:
    """Pads prompts into buckets, runs prefill and decode, and decodes texts on the host."""

    def __init__(
        self,
        model: Decoder,
        sampling: SamplingConfig,
        tokenizer: transformers.PreTrainedTokenizerBase | None,
        eos: Sequence[int],
        mesh: jax.sharding.Mesh | None = None,
    ):
        """Keeps the model's graph only: parameters come with every `sample` call."""
        cfg = model.cfg
        self.graphdef, self.cfg = nnx.graphdef(model), cfg
        self.sampling, self.tokenizer, self.mesh = sampling, tokenizer, mesh
        text = sampling.stop or sampling.require_prefix or sampling.require_call
        if text and tokenizer is None:
            raise ValueError("sampling.stop, require_prefix and require_call need a tokenizer "
                             "to match text")  # fmt: skip
        no_text = [b""] * cfg.vocab_size  # without stop strings: one state, never accepting
        pieces = token_pieces(tokenizer, cfg.vocab_size) if text else no_text
        table_SV, accept_S = stop_table(pieces, sampling.stop)
        if sampling.require_call:
            prefix, failed_S = call_automaton()
        else:
            prefix, failed_S = prefix_automaton(sampling.require_prefix.encode())
        required = sampling.require_prefix or sampling.require_call
        prefix_SV = token_table(pieces, prefix) if required else np.zeros_like(table_SV[:1])
        # On the mesh's every device (one placement for all the processes of a multi-process run).
        put = functools.partial(
            jax.device_put, device=None if mesh is None else NamedSharding(mesh, P())
        )
        self.tables = tuple(put(x) for x in (table_SV, accept_S, prefix_SV, failed_S))
        self.eos = put(np.asarray(list(eos) or [-1], np.int32))

    def pad(self, prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Left-pads token-id prompts to the smallest bucket that fits the longest."""
        sampling, context = self.sampling, self.cfg.max_position_embeddings
        if not prompts:
            raise ValueError("sampler: no prompts")
        largest = max(sampling.buckets)
        for i, ids in enumerate(prompts):
            if not len(ids):
                raise ValueError(f"sampler: prompt {i} is empty")
            if len(ids) > largest:
                raise ValueError(
                    f"sampler: prompt {i} has {len(ids)} tokens, more than the largest bucket "
                    f"({largest}); add a bigger one to sampling.buckets"
                )
            if len(ids) + sampling.max_new_tokens > context:
                raise ValueError(
                    f"sampler: prompt {i} has {len(ids)} tokens; with max_new_tokens="
                    f"{sampling.max_new_tokens} it exceeds the model's context of {context}"
                )
        longest = max(len(ids) for ids in prompts)
        width = min(b for b in sampling.buckets if b >= longest)
        prompt_BS = np.zeros((len(prompts), width), np.int32)
        mask_BS = np.zeros((len(prompts), width), bool)
        for row, ids in enumerate(prompts):
            prompt_BS[row, width - len(ids) :], mask_BS[row, width - len(ids) :] = ids, True
        return prompt_BS, mask_BS

    def shared(self, prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[int]]
               ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """The padded prefixes, once they are checked against their suffixes."""
        if not prefixes or len(suffixes) % len(prefixes):
            raise ValueError(f"sampler: {len(prefixes)} prefixes do not divide "
                             f"{len(suffixes)} prompts")  # fmt: skip
        m, context = len(suffixes) // len(prefixes), self.cfg.max_position_embeddings
        for i, ids in enumerate(suffixes):
            total = len(prefixes[i // m]) + len(ids) + self.sampling.max_new_tokens
            if total > context:
                raise ValueError(f"sampler: prompt {i} with its prefix and max_new_tokens "
                                 f"is {total} tokens, over the context of {context}")  # fmt: skip
        return self.pad(prefixes)

    def sample(
        self, state: nnx.State, prompts: Sequence[Sequence[int]], seed: int | jax.Array = 0,
        prefixes: Sequence[Sequence[int]] | None = None,
    ) -> Rollouts:  # fmt: skip
        """G completions of each token-id prompt; `seed` is an int or a PRNG key. With
        `prefixes` (P of them, P dividing the prompts), prompt i is prefixes[i // M] + prompts[i]
        for M = len(prompts) / P, and each prefix runs through the model once."""
        sampling = self.sampling
        prompt_BS, mask_BS = self.pad(prompts)
        key = jax.random.key(seed) if isinstance(seed, int) else seed
        mesh = jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()
        tables = (self.eos, *self.tables)
        fields = ("tokens_BN", "logprobs_BN", "entropies_BN", "lengths_B", "finish_B")
        parts = []
        with mesh:
            if prefixes is None:
                size = sampling.max_prompts or len(prompts)
                for k, lo in enumerate(range(0, len(prompts), size)):
                    part_key = key if size >= len(prompts) else jax.random.fold_in(key, k)
                    prompt, s = prefill(self.graphdef, state, prompt_BS[lo : lo + size],
                                        mask_BS[lo : lo + size], part_key, *tables,
                                        sampling=sampling)  # fmt: skip
                    parts.append(self.decode(state, prompt, s, tables))
            else:
                prefix_PS, prefix_mask_PS = self.shared(prefixes, prompts)
                prompt, s = prefill_shared(self.graphdef, state, prefix_PS, prefix_mask_PS,
                                           prompt_BS, mask_BS, key, *tables,
                                           sampling=sampling)  # fmt: skip
                m = len(prompts) // len(prefixes)
                prompt_BS = np.concatenate([np.repeat(prefix_PS, m, axis=0), prompt_BS], axis=1)
                mask_BS = np.concatenate([np.repeat(prefix_mask_PS, m, axis=0), mask_BS], axis=1)
                parts.append(self.decode(state, prompt, s, tables))
        out = {f: np.concatenate([getattr(part, f) for part in parts]) for f in fields}
        tokens_BN, lengths_B, finish_B = out["tokens_BN"], out["lengths_B"], out["finish_B"]
        texts = []
        for row in range(len(tokens_BN)):
            if self.tokenizer is None:
                texts.append("")
                continue
            ids = tokens_BN[row, : lengths_B[row]].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            stopped = finish_B[row] == FINISH.index("stop")
            texts.append(cut_at_stop(text, sampling.stop) if stopped else text)
        g = sampling.num_samples
        return Rollouts(
            prompt_BS=np.repeat(prompt_BS, g, axis=0),
            prompt_mask_BS=np.repeat(mask_BS, g, axis=0),
            tokens_BN=tokens_BN,
            logprobs_BN=out["logprobs_BN"],
            entropies_BN=out["entropies_BN"],
            lengths_B=lengths_B,
            finish_B=finish_B,
            texts=tuple(texts),
        )

    def decode(self, state: nnx.State, prompt: PromptCache, s: DecodeState,
               tables: tuple) -> DecodeState:  # fmt: skip
        """`decode` to the end; with `sampling.compact`, in stages over ever fewer prompts (the
        batch cut to the next power of two above those still running, padded with repeats).
        Returns the completions' fields on the host, every row in its place."""
        sampling, g = self.sampling, self.sampling.num_samples
        fields = ("tokens_BN", "logprobs_BN", "entropies_BN", "lengths_B", "finish_B")
        prompts_P = np.arange(prompt.lengths_B.shape[0])  # the original prompt of each
        out = None
        while True:
            until = len(prompts_P) // 4 if sampling.compact else 0
            s = decode(self.graphdef, state, prompt, s, *tables, sampling=sampling, until=until)
            got = {f: np.array(to_host(getattr(s, f))) for f in fields}
            rows = (prompts_P[:, None] * g + np.arange(g)).reshape(-1)
            if out is None:
                out = got
            else:  # a padding repeat writes the same values as its original
                for f in fields:
                    out[f][rows] = got[f]
            running_P = np.flatnonzero((got["finish_B"] == 0).reshape(-1, g).any(axis=1))
            if not len(running_P) or int(s.step) >= sampling.max_new_tokens:
                return s.replace(**out)
            size = 1 << (len(running_P) - 1).bit_length()
            keep_P = np.concatenate([running_P, np.repeat(running_P[:1], size - len(running_P))])
            prompt, s = keep_prompts(prompt, s, keep_P, g=g)
            prompts_P = prompts_P[keep_P]
