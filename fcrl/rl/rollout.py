"""From rollouts to the train step's `Batch`, on the host and the devices: the `<think>` span from
the tokens' bytes, the old and reference log-probs, the mini-batches of one rollout batch, and
what the host knows of a step right away."""

import jax
import ml_collections
import numpy as np
from flax import nnx

from fcrl.rl.loss import token_logprobs
from fcrl.rl.train import Batch, micro_join, micro_split, prompt_group
from fcrl.sampler import FINISH, Rollouts
from fcrl.sharding import to_host
from fcrl.verifier import REASONS


def think_mask(tokens_BN: np.ndarray, lengths_B: np.ndarray, pieces: list[bytes]) -> np.ndarray:
    """[B, N] True on completion tokens whose bytes fall between `<think>` and `</think>` (to
    the end of the completion when it never closes); all False without a `<think>`."""
    out = np.zeros(tokens_BN.shape, bool)
    for row, (ids, n) in enumerate(zip(tokens_BN, lengths_B, strict=True)):
        parts = [pieces[i] for i in ids[:n]]
        text = b"".join(parts)
        opened = text.find(b"<think>")
        if opened < 0:
            continue
        start = opened + len(b"<think>")
        end = text.find(b"</think>", start)
        end = len(text) if end < 0 else end
        offsets = np.cumsum([0] + [len(p) for p in parts])
        sizes = np.diff(offsets)
        out[row, :n] = (sizes > 0) & (offsets[:-1] < end) & (offsets[1:] > start)
    return out


def make_batch(rollouts: Rollouts, rewards_B: np.ndarray, pieces: list[bytes]) -> Batch:
    """Prompt (left-padded) then completion (right-padded) per row, the sampler's log-probs
    and entropies at the completion's columns; reference log-probs zero until computed."""
    prompt_BS, n = rollouts.prompt_BS, rollouts.tokens_BN.shape[1]
    completion_BN = np.arange(n)[None] < rollouts.lengths_B[:, None]
    no_BS = np.zeros(prompt_BS.shape, bool)

    def widen(x_BN: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros(prompt_BS.shape, x_BN.dtype), x_BN], axis=1)

    return Batch(
        tokens_BT=np.concatenate([prompt_BS, rollouts.tokens_BN], axis=1),
        mask_BT=np.concatenate([rollouts.prompt_mask_BS, completion_BN], axis=1),
        completion_BT=np.concatenate([no_BS, completion_BN], axis=1),
        think_BT=np.concatenate(
            [no_BS, think_mask(rollouts.tokens_BN, rollouts.lengths_B, pieces)], axis=1
        ),  # fmt: skip
        old_logp_BT=widen(rollouts.logprobs_BN),
        old_entropy_BT=widen(rollouts.entropies_BN),
        ref_logp_BT=widen(np.zeros_like(rollouts.logprobs_BN)),
        rewards_B=rewards_B.astype(np.float32),
        start=prompt_BS.shape[1],
    )


def sequence_logprobs(
    graphdef: nnx.GraphDef, params: nnx.State, tokens_BT: jax.Array, mask_BT: jax.Array,
    *, temperature: float, chunk: int, start: int = 1, group: int = 1, micro_batches: int = 1,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """The training graph's log-probs and entropies of a batch (old or reference policy) from
    column `start` on, each prompt run once for its `group` rows, in `micro_batches` parts one
    after another (split like the train step's micro-batches: each device keeps its rows)."""
    model = nnx.merge(graphdef, params)

    def part(xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return token_logprobs(model, *xs, temperature, chunk, start, group)

    split = (micro_split(x, micro_batches, group) for x in (tokens_BT, mask_BT))
    return jax.tree.map(lambda x: micro_join(x, group), jax.lax.map(part, tuple(split)))


def policy_logprobs(
    batch: Batch, params, ref_params, logprobs, ref_logprobs, config
) -> tuple[Batch, dict]:
    """The batch with the training graph's old log-probs and entropies (old_logprobs =
    "recompute", logging their gap to the sampler's; `logprobs`) and the reference's log-probs
    (when β > 0; `ref_logprobs`, which computes no entropies)."""
    gaps, rows = {}, batch.rewards_B.shape[0]
    m = config.updates.mini_batches * config.rl.micro_batches  # parts of a micro-batch's rows
    group = prompt_group(batch, rows // m, config.rl.group_size)
    columns = {"start": batch.start, "group": group, "micro_batches": m}
    if config.old_logprobs == "recompute":
        logp_BT, entropy_BT = logprobs(params, batch.tokens_BT, batch.mask_BT, **columns)
        gap_BT = np.abs(to_host(logp_BT) - to_host(batch.old_logp_BT))
        on_BT = to_host(batch.completion_BT)
        gaps = {"sampler/logp_diff_max": float(gap_BT[on_BT].max()),
                "sampler/logp_diff_mean": float(gap_BT[on_BT].mean())}  # fmt: skip
        batch = batch.replace(old_logp_BT=logp_BT, old_entropy_BT=entropy_BT)
    if ref_params is not None:
        batch = batch.replace(
            ref_logp_BT=ref_logprobs(ref_params, batch.tokens_BT, batch.mask_BT, **columns)
        )
    return jax.block_until_ready(batch), gaps


def signal_groups(rewards_B: np.ndarray, group_size: int, keep: int) -> np.ndarray:
    """Which `keep` of the rolled-out groups a step trains on (dynamic sampling, as in DAPO):
    those whose rewards differ first, then uniform ones, each kind in rollout order."""
    rewards_PG = rewards_B.reshape(-1, group_size)
    uniform_P = (rewards_PG == rewards_PG[:, :1]).all(axis=1)
    return np.sort(np.argsort(uniform_P, kind="stable")[:keep])


def mini_batches(batch: Batch, updates: ml_collections.ConfigDict):
    """The optimizer updates of one rollout batch: `epochs` passes over `mini_batches`
    consecutive slices of whole groups, in a fixed order, each placed like the batch."""
    rows = batch.rewards_B.shape[0] // updates.mini_batches
    sharding = batch.rewards_B.sharding
    for _ in range(updates.epochs):
        for k in range(updates.mini_batches):
            if updates.mini_batches == 1:
                yield batch
            else:
                part = jax.tree.map(lambda x, k=k: x[k * rows : (k + 1) * rows], batch)
                yield jax.device_put(part, sharding)


def rollout_metrics(
    rollouts: Rollouts, rewards_B: np.ndarray, reasons_B: np.ndarray, batch: Batch,
    rollout_s: float, reward_s: float,
) -> dict[str, float]:  # fmt: skip
    """What the host knows of a step right away: rewards, reasons, lengths, times."""
    lengths_B = rollouts.lengths_B
    think_BT = np.asarray(batch.think_BT)
    think_B = think_BT.sum(axis=1)
    entropy_BT = np.asarray(batch.old_entropy_BT)  # the sampler's, at the rollout temperature
    out = {
        "reward/mean": float(rewards_B.mean()),
        "rollout/length_mean": float(lengths_B.mean()),
        "rollout/length_max": float(lengths_B.max()),
        "rollout/think_length_mean": float(think_B.mean()),
        "rollout/tokens_per_s": float(lengths_B.sum() / rollout_s),
        "time/rollout": rollout_s,
        "time/reward": reward_s,
    }
    if think_BT.any():
        out["rollout/think_entropy"] = float(entropy_BT[think_BT].mean())
    for code, name in enumerate(FINISH[1:], 1):
        out[f"rollout/finish_{name}"] = float(np.mean(rollouts.finish_B == code))
    for reason in REASONS:
        if reason != "ok":
            out[f"reward/zero_{reason}"] = float(np.mean(reasons_B == reason))
    return out
