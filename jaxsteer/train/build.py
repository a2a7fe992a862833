"""What a run config builds before any learner runs: the model and tokenizer, the examples, the
reward function and the prompt encoding.

    inputs = build_inputs(cfg)                  # keyword arguments override what cfg would load
    ids = inputs.encode(example)                # cached token ids of an example's prompt
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import InputError
from ..models.config import ModelConfig, RopeConfig
from ..models.generate import tokenize_prompts
from ..models.params import Model, init_params
from .config import ConfigError, ModelSpec, TrainConfig, resolve_dtype
from .rewards import get_reward_fn

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def random_model_config(fields: dict | None) -> ModelConfig:
    """A `ModelConfig` from the `model.random` fields (Llama defaults for what is not given)."""
    fields = dict(fields or {})
    fields.setdefault("architecture", "LlamaForCausalLM")
    fields.setdefault("norm_eps", 1e-5)
    fields.setdefault("eos_token_ids", (1,))
    fields.setdefault("pad_token_id", 0)
    fields["eos_token_ids"] = tuple(fields["eos_token_ids"])
    fields["rope_full"] = RopeConfig(theta=float(fields.pop("rope_theta", 10000.0)))
    if "head_dim" not in fields and "d_model" in fields and "n_heads" in fields:
        fields["head_dim"] = fields["d_model"] // fields["n_heads"]
    fields.setdefault("n_kv_heads", fields.get("n_heads"))
    try:
        return ModelConfig(**fields)
    except TypeError as e:
        raise ConfigError(f"model.random: {e}") from None


def build_model(spec: ModelSpec) -> tuple[Model, Any]:
    """The model (and tokenizer) a `ModelSpec` names; "random" builds one from `spec.random`. The
    weights' dtype is `model.dtype` ("auto": bfloat16 on an accelerator backend, float32 on CPU)."""
    dtype = DTYPES[resolve_dtype(spec.dtype)]
    if spec.spec == "random":
        config = random_model_config(spec.random)
        return init_params(config, jax.random.PRNGKey(spec.random_seed), dtype=dtype, scale=spec.random_scale), None
    from ..models.loading import load

    return load(spec.spec, dtype=dtype)


def load_examples(spec: str) -> list:
    """Examples from a dataset spec (`load_dataset`), or `"py:module:function"` (called with no args)."""
    if spec.startswith("py:"):
        module, _, fn = spec[3:].partition(":")
        return list(getattr(importlib.import_module(module), fn)())
    from .data import load_dataset

    return load_dataset(spec)


def check_before_loading(
    cfg: TrainConfig,
    *,
    train_examples: Sequence | None = None,
    eval_examples: Sequence | None = None,
    reward_fn: Callable | None = None,
) -> None:
    """Check everything a run config can be checked for before the model loads.

    Dataset specs parse and their files exist, "py:" dataset functions and the reward resolve.

    Args:
        cfg: the run config.
        train_examples: training examples given explicitly (then not checked).
        eval_examples: held-out examples given explicitly (then not checked).
        reward_fn: a reward given explicitly (then not checked).

    Raises:
        ConfigError: naming the field.
    """
    from .data import DatasetError, check_dataset_spec

    e = cfg.eval
    specs = [("data.train", cfg.data.train, train_examples)]
    if cfg.data.eval and (e.before or e.after or e.every):
        specs.append(("data.eval", cfg.data.eval, eval_examples))
    for field, spec, given in specs:
        if given is not None:
            continue
        try:
            if spec.startswith("py:"):
                module, _, fn = spec[3:].partition(":")
                if not callable(getattr(importlib.import_module(module), fn, None)):
                    raise ConfigError(f"{field}={spec!r}: {module} has no function {fn!r}")
            else:
                check_dataset_spec(spec)
        except (DatasetError, ImportError) as err:
            raise ConfigError(f"{field}: {err}") from None
    if reward_fn is None:
        try:
            get_reward_fn(cfg.data.reward)
        except (ValueError, ImportError) as err:
            raise ConfigError(f"data.reward: {err}") from None


def encode_prompt(example, tokenizer: Any, template: str = "chat", system: str | None = None) -> list[int]:
    """Token ids of an example's prompt.

    Args:
        example: the example; its `meta["prompt_ids"]` wins when present (tokenizer-free tasks).
        tokenizer: the tokenizer.
        template: "chat" (the tokenizer's chat template), "raw" (the text as is), or a format string
            containing `{prompt}`.
        system: the chat template's system message (None: none).

    Returns:
        The prompt's token ids.
    """
    ids = (getattr(example, "meta", None) or {}).get("prompt_ids")
    if ids is not None:
        return [int(i) for i in ids]
    if tokenizer is None:
        raise InputError("text prompts need a tokenizer (or give token ids in example.meta['prompt_ids'])")
    if template == "chat":
        return tokenize_prompts(tokenizer, [example.prompt], chat=True, system=system)[0]
    text = example.prompt if template == "raw" else template.format(prompt=example.prompt)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


class PromptEncoder:
    """`encode_prompt` with a cache keyed by the prompt (and its token ids, when given)."""

    def __init__(self, tokenizer: Any, template: str = "chat", system: str | None = None):
        self.tokenizer, self.template, self.system = tokenizer, template, system
        self._cache: dict[Any, list[int]] = {}

    def __call__(self, example) -> list[int]:
        key = (example.prompt, json.dumps((example.meta or {}).get("prompt_ids")))
        if key not in self._cache:
            self._cache[key] = encode_prompt(example, self.tokenizer, self.template, self.system)
        return self._cache[key]


@dataclasses.dataclass
class Inputs:
    """What a run trains on.

    Attributes:
        model: the base model.
        tokenizer: its tokenizer (None for token-id data).
        reward_fn: the reward function.
        train_examples: the training examples.
        eval_examples: the held-out examples.
        encode: example -> prompt ids.
        load_seconds: the time spent loading all of this.
    """

    model: Model
    tokenizer: Any
    reward_fn: Callable
    train_examples: Sequence
    eval_examples: list
    encode: PromptEncoder
    load_seconds: float


def build_inputs(
    cfg: TrainConfig,
    *,
    model: Model | None = None,
    tokenizer: Any = None,
    reward_fn: Callable | None = None,
    train_examples: Sequence | None = None,
    eval_examples: Sequence | None = None,
) -> Inputs:
    """The `Inputs` of a run config.

    Held-out examples are loaded only when some evaluation is on, and cut to `eval.n`.

    Args:
        cfg: the run config.
        model: replaces the configured model (tests pass tiny models).
        tokenizer: replaces the model's tokenizer.
        reward_fn: replaces `data.reward`.
        train_examples: replace `data.train` (e.g. token-id tasks).
        eval_examples: replace `data.eval`.

    Returns:
        The `Inputs`.
    """
    t0 = time.perf_counter()
    source = "train_examples"
    if train_examples is None:  # the data first: a dataset that cannot serve a step fails before the model loads
        train_examples, source = load_examples(cfg.data.train), f"data.train={cfg.data.train!r}"
    if len(train_examples) < cfg.prompts_per_step:
        raise ConfigError(
            f"{source} has {len(train_examples)} example(s), fewer than "
            f"prompts_per_step={cfg.prompts_per_step}: every step would repeat the same prompts; "
            "lower prompts_per_step or use more data"
        )
    e = cfg.eval
    if eval_examples is None and cfg.data.eval and (e.before or e.after or e.every):
        eval_examples = load_examples(cfg.data.eval)
    if model is None:
        model, tokenizer = build_model(cfg.model)
    reward_fn = get_reward_fn(reward_fn if reward_fn is not None else cfg.data.reward)
    encode = PromptEncoder(tokenizer, cfg.data.prompt_template, cfg.data.system)
    return Inputs(
        model, tokenizer, reward_fn, train_examples, list(eval_examples or [])[: e.n], encode, time.perf_counter() - t0
    )


__all__ = [
    "DTYPES",
    "random_model_config",
    "build_model",
    "check_before_loading",
    "load_examples",
    "encode_prompt",
    "PromptEncoder",
    "Inputs",
    "build_inputs",
]
