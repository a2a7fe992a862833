"""ES population evaluation as one compiled program, and one generation (evaluate, score, update).

One generation: every member (its parameters regenerated from `fold_in(noise_key, m)` inside the
program) generates completions for the same prompts, the member axis vmapped (and split over
devices with `shard_map` when a mesh is given); rewards run in Python on the decoded texts; the
fitness (mean reward over prompts) is shaped and the strategy updates its state, a pytree
`{"theta", "opt", "key", "generation"}` that `jaxsteer.train.checkpoint` saves with Orbax.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ...errors import InputError
from ...models.generate import SamplingConfig, decode_completions, prepare_prompts, sample_tokens
from ...models.params import Model
from ..distributed import gather_rows, local_rows
from ..rewards import score_completions
from ..sharding import replicate
from .strategies import sampling_key

# --------------------------------------------------------------------------- population evaluation


@dataclasses.dataclass
class PopulationOutput:
    """Completions of every member on the same prompts.

    In a multi-process run, M counts this process's members only (a contiguous block; `gather_rows`
    joins them in member order).

    Attributes:
        tokens: `[M, B, N]` completion tokens (as `Generation`: pad after the stop token).
        logprobs: `[M, B, N]` their log-probs (0 after the stop token).
        lengths: `[M, B]` completion lengths.
        prompt_tokens: `[B, P]` the left-padded prompts.
        prompt_mask: `[B, P]` their mask.
        texts: `[M][B]` decoded completions when a tokenizer was given, else None.
        seconds: wall time of the compiled call.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray
    texts: list[list[str]] | None
    seconds: float


def member_mesh(devices: Sequence | None = None, axis: str = "members") -> Mesh:
    """A 1-D mesh over `devices` (default: all) whose axis carries the population."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices, dtype=object), (axis,))


def _members_fn(model, space, state, prompt, mask, stop_ids, pad_id, strategy, sampling, member_batch):
    """ids `[m]` -> (tokens, logprobs, lengths) for those members (vmapped, or in chunks)."""
    skey = sampling_key(state)

    def one(m):
        member = strategy.member(space, state, m)
        run_model, interventions = space.apply(model, member)
        return sample_tokens(run_model, prompt, mask, stop_ids, pad_id, skey, interventions, sampling)

    def many(ids):
        if member_batch and member_batch < ids.shape[0]:
            return jax.lax.map(one, ids, batch_size=member_batch)
        return jax.vmap(one)(ids)

    return many


@functools.partial(jax.jit, static_argnames=("sampling", "member_batch", "mesh", "axis"))
def population_program(
    model, space, strategy, state, member_ids, prompt, mask, stop_ids, pad_id, *, sampling, member_batch, mesh, axis
):
    """The compiled population evaluation behind `population_generate` (prepared prompts, member ids
    split over `axis` of `mesh` with `shard_map`, or vmapped on one device when `mesh` is None):
    `(tokens, logprobs, lengths)` `[M, B, N]`, `[M, B, N]`, `[M, B]`. Public for lowering it ahead
    of time (`jax.export`)."""
    if mesh is None:
        many = _members_fn(model, space, state, prompt, mask, stop_ids, pad_id, strategy, sampling, member_batch)
        return many(member_ids)

    def local(ids, model, space, strategy, state, prompt, mask, stop_ids, pad_id):
        many = _members_fn(model, space, state, prompt, mask, stop_ids, pad_id, strategy, sampling, member_batch)
        return many(ids)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(axis),) + (P(),) * 8, out_specs=P(axis), check_vma=False)
    return sharded(member_ids, model, space, strategy, state, prompt, mask, stop_ids, pad_id)


def population_generate(
    model: Model,
    space,
    strategy,
    state: dict,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 32,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_tokens: Sequence[int] | None = None,
    tokenizer: Any = None,
    bucket: int = 8,
    member_ids: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    axis: str | tuple[str, ...] = "members",
    member_batch: int | None = None,
) -> PopulationOutput:
    """Generate with every member of the population (or `member_ids`) on the same prompts, in one compiled call.

    Member m's parameters are `strategy.member(space, state, m)`, regenerated inside the program.
    Sampled decoding (`greedy=False`) uses one key for all members (common random numbers).

    Args:
        model: the base decoder.
        space: the search space.
        strategy: the evolution strategy.
        state: the strategy's state.
        prompt_ids: the prompts' token ids.
        max_new_tokens: tokens per completion.
        greedy: greedy decoding (else sampled).
        temperature: the sampling temperature.
        top_p: nucleus filtering mass (1.0: off).
        top_k: keep the k most likely tokens (0: off).
        stop_tokens: ids that end a completion (None: the model's and tokenizer's EOS).
        tokenizer: decodes the completions (None: no texts).
        bucket: prompt lengths are padded to a multiple of this.
        member_ids: the members to run (None: the whole population).
        mesh: split the member axis over `axis` of this mesh (`shard_map`; the model and prompts are
            replicated), across processes too (each gets its own members' outputs); the number of
            members must divide evenly.
        axis: the mesh axis (or axes) of the members.
        member_batch: evaluate this many members at a time (`lax.map`), bounding memory for large
            spaces such as `FullSpace` (None: all at once).

    Returns:
        The members' completions.
    """
    ids = np.arange(strategy.population) if member_ids is None else np.asarray(member_ids)
    prepared = prepare_prompts(
        model, prompt_ids, tokenizer=tokenizer, max_new_tokens=max_new_tokens, bucket=bucket, stop_tokens=stop_tokens
    )
    sampling = SamplingConfig(int(max_new_tokens), float(temperature), int(top_k), float(top_p), bool(greedy))
    member_ids_arr = jnp.asarray(ids, jnp.int32)
    args = (model, space, strategy, state)
    if mesh is not None:
        n = int(np.prod([mesh.shape[a] for a in (axis if isinstance(axis, tuple) else (axis,))]))
        if len(ids) % n:
            raise InputError(f"{len(ids)} members do not split over {n} devices of mesh axis {axis!r}")
        args = replicate(args, mesh)
        member_ids_arr = jax.make_array_from_callback(ids.shape, NamedSharding(mesh, P(axis)), lambda i: ids[i])
    prompt_args = prepared.args if mesh is None else replicate(prepared.args, mesh)
    t0 = time.perf_counter()
    out = population_program(
        *args, member_ids_arr, *prompt_args, sampling=sampling, member_batch=member_batch or None, mesh=mesh, axis=axis
    )
    tokens, logprobs, lengths = (local_rows(x) for x in jax.block_until_ready(out))
    seconds = time.perf_counter() - t0
    texts = decode_completions(tokenizer, tokens, lengths)
    toks, mask = prepared.tokens, prepared.mask
    return PopulationOutput(tokens, logprobs, lengths, toks, mask, texts, seconds)


def score_population(
    reward_fn: Callable, examples: Sequence, prompt_ids: Sequence[Sequence[int]], out: PopulationOutput
) -> np.ndarray:
    """Rewards `[M, B]` in Python.

    Args:
        reward_fn: `reward_fn(prompt, text, answer)`, or with token ids when the function has
            `uses_tokens = True` (`jaxsteer.train.rewards.token_reward`).
        examples: the prompts' examples.
        prompt_ids: their token ids.
        out: the members' completions.

    Returns:
        The rewards (float32).
    """
    rows = []
    for m in range(out.tokens.shape[0]):
        gen = types.SimpleNamespace(
            tokens=out.tokens[m], lengths=out.lengths[m], texts=None if out.texts is None else out.texts[m]
        )
        rows.append(score_completions(reward_fn, examples, prompt_ids, gen))
    return np.stack(rows).astype(np.float32)


# --------------------------------------------------------------------------- one generation


@jax.jit
def update_strategy(space, strategy, state: dict, rewards) -> tuple[dict, dict]:
    """`strategy.update` on rewards `[M, B]`, jitted: `(new state, metrics)`."""
    return strategy.update(space, state, rewards)


def center_member(space, theta):
    """The unperturbed member (theta itself, as `space.apply` takes it)."""
    return space.perturb(theta, jax.random.PRNGKey(0), 0.0)


def es_generation(
    model: Model,
    space,
    strategy,
    state: dict,
    examples: Sequence,
    prompt_ids: Sequence[Sequence[int]],
    reward_fn: Callable,
    **generate_kwargs,
) -> tuple[dict, dict, PopulationOutput, np.ndarray]:
    """One generation: evaluate the population (one compiled call), rewards in Python, shape + update (one jit).

    Args:
        model: the base decoder.
        space: the search space.
        strategy: the evolution strategy.
        state: the strategy's state.
        examples: the generation's examples.
        prompt_ids: their prompts' token ids.
        reward_fn: scores a completion against the example's answer.
        **generate_kwargs: `population_generate`'s settings.

    Returns:
        `(new state, metrics, outputs, rewards)`.
    """
    out = population_generate(model, space, strategy, state, prompt_ids, **generate_kwargs)
    t0 = time.perf_counter()
    rewards = gather_rows(score_population(reward_fn, examples, prompt_ids, out))  # each process its members
    lengths = gather_rows(out.lengths)
    t_reward = time.perf_counter() - t0
    t0 = time.perf_counter()
    mesh = generate_kwargs.get("mesh")
    new_state, metrics = update_strategy(
        space, strategy, state, jnp.asarray(rewards) if mesh is None else replicate(rewards, mesh)
    )
    metrics = {k: np.asarray(v).item() for k, v in jax.device_get(metrics).items()}
    t_update = time.perf_counter() - t0
    generated = int(lengths.sum())
    metrics.update(
        generation=int(state["generation"]),
        population=int(lengths.shape[0]),
        prompts=len(prompt_ids),
        reward_mean=float(rewards.mean()),
        reward_std=float(rewards.std()),
        accuracy=float((rewards > 0).mean()),
        completion_length=float(lengths.mean()),
        eval_seconds=out.seconds,
        reward_seconds=t_reward,
        update_seconds=t_update,
        generated_tokens_per_s=generated / max(out.seconds, 1e-9),
    )
    return new_state, metrics, out, rewards


__all__ = [
    "PopulationOutput",
    "member_mesh",
    "population_program",
    "population_generate",
    "score_population",
    "center_member",
    "update_strategy",
    "es_generation",
]
