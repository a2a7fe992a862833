"""PPO's critic at work: the per-token targets (GAE advantages, returns, old values) of a rollout
batch from the value head (`trainable.init_value_head` / `trainable.value_estimates`).

The head reads the last layer's `resid_post` at each position that predicts a completion token,
through the model's final norm (what the unembedding reads, and Hugging Face's last hidden state):
`V_t = rms_norm(h_t) . w + b`, `{"w": [d], "b": []}`, zeros at init (V = 0). It lives in the train
state beside the policy's trainable part (`state["value"]`, with its own optimizer state
`state["value_opt"]`, both checkpointed) and is trained jointly: one loss, `pg_loss + value_coef *
value_loss`, whose gradient reaches the value head and, through the shared residual stream, the
policy's trainable part (steering vectors, LoRA factors or the full weights).

Per rollout batch (`ppo_targets`): one gradient-free forward per micro-batch under the sampling
policy gives `V_old`; the sequence reward sits on the last generated token (`terminal_rewards`);
`gae` gives advantages and returns; advantages are whitened over the whole batch (every process).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ...models.params import Model
from ..distributed import gather_rows, local_rows
from ..scoring import completion_states
from ..sharding import batch_sharding, global_batch
from ..trainable import build_policy, value_estimates
from .losses import gae, terminal_rewards, whiten
from .rollout import RolloutBatch


def make_value_fn(spec, *, base_shardings=None, state_shardings=None, mesh=None):
    """`fn(base, state, tokens, mask, prompt_width) -> values [B, N]` under the state's policy and
    value head, jitted (rows sharded over the mesh's batch axes when `mesh` is given)."""
    cache: dict[int, Callable] = {}

    def values(base, state, tokens, mask, *, prompt_width: int):
        model, ivs = build_policy(base, state["trainable"], spec.trainable)
        group = spec.shared_prompts if spec.shared_prompts > 1 and tokens.shape[0] % spec.shared_prompts == 0 else 1
        h = completion_states(model, tokens, mask, ivs, completion_start=prompt_width, group_size=group)
        return value_estimates(model, state["value"], h) * mask[:, prompt_width:]

    def fn(base, state, tokens, mask, prompt_width: int):
        if prompt_width not in cache:
            kw: dict[str, Any] = {}
            if mesh is not None:
                rows = batch_sharding(mesh, 2, micro=False)
                kw = dict(in_shardings=(base_shardings, state_shardings, rows, rows), out_shardings=rows)
            cache[prompt_width] = jax.jit(functools.partial(values, prompt_width=prompt_width), **kw)
        return cache[prompt_width](base, state, tokens, mask)

    return fn


@functools.partial(jax.jit, static_argnames=("gamma", "lam"))
def _gae_of(rewards, values, comp_mask, gamma, lam):
    return gae(terminal_rewards(rewards, comp_mask), values, comp_mask, gamma, lam)


def ppo_targets(
    value_fn, base: Model, state: dict, batch: RolloutBatch, *, micro_batches: int, gamma: float, lam: float, mesh
) -> RolloutBatch:
    """The batch with PPO's per-token `advantages` (GAE, whitened over every process's tokens),
    `returns` and `old_values`, all `[B, N]`. Values come from `value_fn` (`make_value_fn`), one
    call per micro-batch of this process's rows."""
    P, rows = batch.prompt_width, len(batch.rewards)
    per = rows // micro_batches
    values = []
    for m in range(micro_batches):
        sl = slice(m * per, (m + 1) * per)
        tokens, mask = (global_batch(x[sl], mesh, micro=False) for x in (batch.tokens, batch.mask))
        values.append(local_rows(value_fn(base, state, tokens, mask, P)))
    values = np.concatenate(values).astype(np.float32)
    comp = batch.completion_mask.astype(np.float32)
    adv, returns = (np.asarray(x) for x in _gae_of(batch.rewards, values, comp, float(gamma), float(lam)))
    everyone = np.asarray(whiten(gather_rows(adv), gather_rows(comp)))  # the statistics of the whole batch
    start = jax.process_index() * rows if jax.process_count() > 1 else 0
    return dataclasses.replace(
        batch,
        advantages=everyone[start : start + rows].astype(np.float32),
        returns=returns.astype(np.float32),
        old_values=values,
    )


__all__ = ["make_value_fn", "ppo_targets"]
