"""Generation: token-for-token agreement with Hugging Face `generate`, log-probabilities,
stop tokens, seeded sampling, steering, compile caching; and the real default model
(SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers' own loading of the same file."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_tiny as H  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxsteer  # noqa: E402
from jaxsteer import Steer  # noqa: E402

# `jaxsteer.models.generate` is the function (it shadows the submodule's attribute), so take the module itself
gen_module = importlib.import_module("jaxsteer.models.generate")

N_NEW = 12
PROMPT_LENGTHS = (5, 9, 3)


@pytest.fixture(scope="module")
def llama():
    hf = H.make_hf(H.llama_config(tie_word_embeddings=False))  # eos = 5, pad = 0
    return hf, H.to_jax(hf)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.RandomState(0)
    return [rng.randint(6, H.VOCAB, n).tolist() for n in PROMPT_LENGTHS]


def _completion(g, row):
    return g.tokens[row, : g.lengths[row]].tolist()


def _scored_logprobs(model, g):
    """log_softmax of `forward` on the generated sequences, at each generated token."""
    seq, mask = g.sequences()
    logits, _ = jaxsteer.forward(model, seq, attention_mask=mask)
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    P = g.prompt_tokens.shape[1]
    out = np.zeros(g.tokens.shape, np.float32)
    for b in range(g.tokens.shape[0]):
        for i in range(g.lengths[b]):
            out[b, i] = logp[b, P - 1 + i, g.tokens[b, i]]
    return out, logits


def test_greedy_matches_hf_and_logprobs_match_forward(llama, prompts):
    hf, model = llama
    g = jaxsteer.generate(model, prompts, max_new_tokens=N_NEW, greedy=True)
    assert g.tokens.shape == (3, N_NEW) and g.logprobs.shape == (3, N_NEW)
    assert g.prompt_tokens.shape[1] % gen_module.PROMPT_BUCKET == 0
    assert g.prompt_mask.sum(1).tolist() == list(PROMPT_LENGTHS)
    assert g.texts is None
    for b, prompt in enumerate(prompts):
        ref = H.hf_greedy(hf, prompt, N_NEW)
        assert _completion(g, b) == ref, f"row {b}"
    expected, _ = _scored_logprobs(model, g)
    valid = np.arange(N_NEW)[None, :] < g.lengths[:, None]
    np.testing.assert_allclose(g.logprobs[valid], expected[valid], rtol=0, atol=1e-5)
    assert np.all(g.logprobs[valid] < 0)


def test_stop_tokens_end_rows(llama, prompts):
    _, model = llama
    free = jaxsteer.generate(model, prompts, max_new_tokens=N_NEW, greedy=True, stop_tokens=[])
    assert free.lengths.tolist() == [N_NEW] * 3
    # pick a stop token that row 0 emits at step k (and not before)
    k = 3
    stop = int(free.tokens[0, k])
    g = jaxsteer.generate(model, prompts, max_new_tokens=N_NEW, greedy=True, stop_tokens=[stop])
    for b in range(3):
        row = free.tokens[b].tolist()
        n = row.index(stop) + 1 if stop in row else N_NEW
        assert g.lengths[b] == n
        assert g.tokens[b, :n].tolist() == row[:n]  # the same text up to and including the stop token
        assert np.all(g.tokens[b, n:] == model.config.pad_token_id)  # pad afterwards
        assert np.all(g.logprobs[b, n:] == 0)
    assert g.lengths[0] <= k + 1
    seq, mask = g.sequences()
    assert seq.shape == (3, g.prompt_tokens.shape[1] + N_NEW)
    assert mask.sum(1).tolist() == [p + n for p, n in zip(PROMPT_LENGTHS, g.lengths, strict=True)]
    # the model's own EOS (5) is a default stop token
    assert gen_module.default_stop_tokens(model) == (5,)


def test_sampling_is_seeded_and_logprobs_match_the_filtered_distribution(llama, prompts):
    _, model = llama
    kw = dict(max_new_tokens=N_NEW, temperature=0.7, top_k=20, top_p=0.9, stop_tokens=[])
    a = jaxsteer.generate(model, prompts, seed=3, **kw)
    b = jaxsteer.generate(model, prompts, seed=3, **kw)
    c = jaxsteer.generate(model, prompts, seed=4, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert not np.array_equal(a.tokens, c.tokens)
    # a jax key works as the seed too
    k = jaxsteer.generate(model, prompts, seed=jax.random.PRNGKey(3), **kw)
    np.testing.assert_array_equal(k.tokens, a.tokens)

    # logprobs are under the temperature / top-k / top-p distribution that was sampled from
    seq, mask = a.sequences()
    logits, _ = jaxsteer.forward(model, seq, attention_mask=mask)
    P = a.prompt_tokens.shape[1]
    sampling = gen_module.SamplingConfig(N_NEW, 0.7, 20, 0.9, False)
    for i in range(N_NEW):
        filtered = gen_module.filter_logits(logits[:, P - 1 + i], sampling)
        lp = np.asarray(jax.nn.log_softmax(filtered, axis=-1))
        expect = lp[np.arange(3), a.tokens[:, i]]
        assert np.all(np.isfinite(expect)), "a sampled token lies outside the top-k / top-p set"
        np.testing.assert_allclose(a.logprobs[:, i], expect, rtol=0, atol=1e-4)

    # top_k = 1 is greedy (and has log-probability 0 under the filtered distribution)
    greedy = jaxsteer.generate(model, prompts, max_new_tokens=N_NEW, greedy=True, stop_tokens=[])
    top1 = jaxsteer.generate(model, prompts, max_new_tokens=N_NEW, top_k=1, seed=9, stop_tokens=[])
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    np.testing.assert_allclose(top1.logprobs, 0.0, atol=1e-6)


def _numpy_filter(logits, temperature, top_k, top_p):
    """An independent top-k / top-p construction: per row, sort descending, keep the first k, then
    the shortest prefix whose probability reaches top_p (the token that crosses it included)."""
    out = np.full_like(logits, -np.inf)
    for row, z in enumerate(logits / temperature):
        order = np.argsort(-z, kind="stable")
        if top_k:
            order = order[:top_k]
        p = np.exp(z[order] - z[order].max())
        p /= p.sum()
        n = int(np.searchsorted(np.cumsum(p), top_p - 1e-12)) + 1 if top_p < 1 else len(order)
        out[row, order[:n]] = z[order[:n]]
    return out


def test_top_k_top_p_equal_an_independent_numpy_construction():
    logits = np.array(
        [[2.0, 1.0, 0.5, -1.0, 3.0, 0.0], [0.0, 0.2, 5.0, 1.0, 1.0 - 1e-3, -2.0], [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]],
        np.float32,
    )
    # known answers first: row 0 at T = 1 has probabilities 0.61, 0.22, 0.08, ... in the order 4, 0, 1, ...
    got = np.asarray(gen_module.filter_logits(jnp.asarray(logits), gen_module.SamplingConfig(4, 1.0, 0, 0.8, False)))
    assert np.isfinite(got[0]).nonzero()[0].tolist() == [0, 4]  # 0.61 < 0.8 <= 0.61 + 0.22
    assert np.isfinite(got[1]).nonzero()[0].tolist() == [2]  # e^5 / sum = 0.94 >= 0.8 alone
    got = np.asarray(gen_module.filter_logits(jnp.asarray(logits), gen_module.SamplingConfig(4, 1.0, 2, 1.0, False)))
    assert [np.isfinite(r).nonzero()[0].tolist() for r in got] == [[0, 4], [2, 3], [4, 5]]
    for temperature in (0.5, 1.0, 2.0):
        for top_k in (0, 1, 3, 5):
            for top_p in (0.3, 0.6, 0.9, 0.99, 1.0):
                s = gen_module.SamplingConfig(4, temperature, top_k, top_p, False)
                got = np.asarray(gen_module.filter_logits(jnp.asarray(logits), s))
                want = _numpy_filter(logits, temperature, top_k, top_p)
                np.testing.assert_array_equal(
                    np.isfinite(got), np.isfinite(want), err_msg=str((temperature, top_k, top_p))
                )
                np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-6)
    # a tie at the k-th logit keeps every tied token, as transformers' TopKLogitsWarper does
    tied = np.asarray(
        gen_module.filter_logits(jnp.asarray([[1.0, 3.0, 1.0, 0.0]]), gen_module.SamplingConfig(4, 1.0, 2, 1.0, False))
    )
    assert np.isfinite(tied[0]).tolist() == [True, True, True, False]


def test_first_argmax_and_categorical_equal_jax_s():
    """The sampler's reductions are jnp.argmax and jax.random.categorical exactly: first maximum
    on ties, -inf entries (filtered tokens) never drawn, NaN rows as argmax treats them, and the
    same draw for the same key (batched and under vmap, as ES runs the sampler)."""
    rng = np.random.RandomState(0)
    x = rng.randint(0, 4, size=(6, 50)).astype(np.float32)  # many ties
    x[1, :] = -np.inf
    x[2, 10:] = -np.inf
    x[3, 7] = np.nan
    x[4, [3, 9]] = np.nan
    np.testing.assert_array_equal(gen_module.first_argmax(jnp.asarray(x)), jnp.argmax(jnp.asarray(x), axis=-1))
    logits = jnp.asarray(rng.normal(0, 2, size=(8, 300)).astype(np.float32))
    filtered = gen_module.filter_logits(logits, gen_module.SamplingConfig(4, 0.7, 0, 0.6, False))
    ours, theirs = jax.jit(gen_module.categorical), jax.jit(lambda k, z: jax.random.categorical(k, z, axis=-1))
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        for z in (logits, filtered):
            got = ours(key, z)
            np.testing.assert_array_equal(got, theirs(key, z))
        assert np.all(np.isfinite(np.take_along_axis(np.asarray(filtered), np.asarray(got)[:, None], -1)))
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    np.testing.assert_array_equal(jax.vmap(ours, (0, None))(keys, logits), jax.vmap(theirs, (0, None))(keys, logits))
    # one key per row: row b is jax.random.categorical(keys[b], logits[b])
    keys = gen_module.row_keys(jax.random.PRNGKey(3), jnp.arange(8), 4)
    np.testing.assert_array_equal(jax.jit(gen_module.row_categorical)(keys, filtered), jax.vmap(theirs)(keys, filtered))


def test_sampled_tokens_equal_a_full_forward_reference(llama, prompts):
    """The compiled sampling loop (K/V cache, fast draw) emits the tokens of a
    plain reference: per step, a full forward over prompt + tokens so far, the filtered logits of
    the last position, and `jax.random.categorical` per row with the row's key at each step
    (`fold_in(fold_in(key, row), step)`, `row_keys`)."""
    # Log-probabilities are the filtered log-softmax at the sampled token.
    _, model = llama
    temperature, top_k, top_p, seed, n = 0.7, 20, 0.9, 5, N_NEW  # as in the seeded-sampling test: compiled once
    g = jaxsteer.generate(
        model, prompts, max_new_tokens=n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop_tokens=[]
    )
    P = g.prompt_tokens.shape[1]
    seq = np.concatenate([g.prompt_tokens, np.zeros((3, n), np.int32)], axis=1)  # causal: the tail is never read
    mask = np.concatenate([g.prompt_mask, np.ones((3, n), np.int32)], axis=1)
    sampling = gen_module.SamplingConfig(n, temperature, top_k, top_p, False)
    key = jax.random.PRNGKey(seed)
    logprobs = np.zeros((3, n), np.float32)
    for i in range(n):
        logits, _ = jaxsteer.forward(model, seq, attention_mask=mask)
        filtered = gen_module.filter_logits(logits[:, P - 1 + i], sampling)
        tok = np.asarray(
            [jax.random.categorical(jax.random.fold_in(jax.random.fold_in(key, b), i), filtered[b]) for b in range(3)]
        )
        logprobs[:, i] = np.asarray(jax.nn.log_softmax(filtered, axis=-1))[np.arange(3), tok]
        seq[:, P + i] = tok
    np.testing.assert_array_equal(g.tokens, seq[:, P:])
    np.testing.assert_allclose(g.logprobs, logprobs, rtol=0, atol=1e-5)
    assert len(np.unique(seq[:, P:])) > n  # really sampled


def test_steer_in_generate_matches_hf_with_down_proj_bias(llama, prompts):
    import copy

    hf, model = llama
    L, d = model.config.n_layers, model.config.d_model
    vectors = np.random.RandomState(1).normal(0, 0.5, (L, d)).astype(np.float32)
    edited = copy.deepcopy(hf)
    H.set_down_proj_bias(edited, vectors)
    g = jaxsteer.generate(model, prompts, max_new_tokens=N_NEW, greedy=True, interventions=Steer(jnp.asarray(vectors)))
    plain = jaxsteer.generate(model, prompts, max_new_tokens=N_NEW, greedy=True)
    assert not np.array_equal(g.tokens, plain.tokens)
    for b, prompt in enumerate(prompts):
        assert _completion(g, b) == H.hf_greedy(edited, prompt, N_NEW), f"row {b}"
    # its logprobs are those of the steered forward pass
    seq, mask = g.sequences()
    logits, _ = jaxsteer.forward(model, seq, attention_mask=mask, interventions=Steer(jnp.asarray(vectors)))
    P = g.prompt_tokens.shape[1]
    lp = np.asarray(jax.nn.log_softmax(logits, -1))
    for b in range(3):
        n = g.lengths[b]
        np.testing.assert_allclose(g.logprobs[b, :n], lp[b, P - 1 + np.arange(n), g.tokens[b, :n]], atol=1e-5)


def test_prompt_lengths_in_one_bucket_do_not_recompile(llama):
    _, model = llama
    if not hasattr(gen_module.sample_with_controls, "_cache_size"):
        pytest.skip("this jax has no jit _cache_size(); cannot count compilations")
    rng = np.random.RandomState(2)
    kw = dict(max_new_tokens=N_NEW, greedy=True)  # as in the tests above: usually compiled already
    g1 = jaxsteer.generate(model, [rng.randint(6, 97, n).tolist() for n in (4, 7, 2)], **kw)
    size = gen_module.sample_with_controls._cache_size()
    assert size >= 1
    g2 = jaxsteer.generate(model, [rng.randint(6, 97, n).tolist() for n in (20, 11, 31)], **kw)
    assert g1.prompt_tokens.shape == g2.prompt_tokens.shape
    assert gen_module.sample_with_controls._cache_size() == size
    # a prompt past the bucket is a new shape: one more compilation
    g3 = jaxsteer.generate(model, [rng.randint(6, 97, n).tolist() for n in (40, 3, 5)], **kw)
    assert g3.prompt_tokens.shape[1] == 2 * g1.prompt_tokens.shape[1]
    assert gen_module.sample_with_controls._cache_size() == size + 1


# --------------------------------------------------------------------------- the real default model

CHAT_PROMPTS = [
    "What is 2+3?",
    "Write a haiku about the sea.",
    "Name three primary colors.",
    "Explain in one sentence why the sky is blue, please, for a child who is five years old.",
]


@pytest.fixture(scope="module")
def smollm2():
    """jaxsteer's `load('smollm2-135m-instruct')` and transformers' float32 load of the same GGUF."""
    from jaxsteer.models.loading import default_model_path, load

    try:
        path = default_model_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    model, tokenizer = load("smollm2-135m-instruct")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    seqs = gen_module.tokenize_prompts(tokenizer, CHAT_PROMPTS)
    return model, tokenizer, hf, seqs


def test_default_model_logits_match_hf(smollm2):
    model, tokenizer, hf, seqs = smollm2
    assert model.config.architecture == "LlamaForCausalLM" and model.config.n_layers == 30
    assert len({len(s) for s in seqs}) == len(seqs)  # the batch really is ragged
    toks, mask = gen_module.left_pad(seqs, tokenizer.pad_token_id)
    logits, _ = jaxsteer.forward(model, toks, attention_mask=mask)
    logits = np.asarray(logits)
    P = toks.shape[1]
    worst = 0.0
    for b, s in enumerate(seqs):
        ref = H.hf_logits(hf, np.asarray([s]))[0]  # HF unpadded, one prompt at a time
        got = logits[b, P - len(s) :]
        worst = max(worst, float(np.abs(got - ref).max()))
        assert np.array_equal(got.argmax(-1), ref.argmax(-1))
    assert worst <= 1e-3, worst


def test_default_model_greedy_generation_matches_hf(smollm2):
    model, tokenizer, hf, seqs = smollm2
    n_new = 32
    g = jaxsteer.generate(model, CHAT_PROMPTS, tokenizer=tokenizer, max_new_tokens=n_new, greedy=True)
    stops = list(gen_module.default_stop_tokens(model, tokenizer))
    np.testing.assert_array_equal(g.prompt_mask.sum(1), [len(s) for s in seqs])
    for b, s in enumerate(seqs):
        ref = H.hf_greedy(hf, s, n_new, eos_token_id=stops)
        assert _completion(g, b) == ref, f"prompt {b}: {g.texts[b]!r} vs {tokenizer.decode(ref)!r}"
        assert g.texts[b] == tokenizer.decode(ref, skip_special_tokens=True)
    assert any(t.strip() for t in g.texts)


def test_samples_per_prompt_shares_the_prefill(llama, prompts):
    """k samples per prompt (one prefill, K/V cache repeated) == the prompts repeated k times:
    the same tokens (greedy, and sampled with the same key), log-probs, lengths and prompts."""
    _, model = llama
    k = 3
    repeated = [p for p in prompts for _ in range(k)]
    steer = Steer(
        jnp.asarray(np.random.RandomState(1).randn(model.config.n_layers, model.config.d_model), jnp.float32) * 0.3
    )
    for kw in ({"greedy": True}, {"temperature": 0.9, "top_k": 20, "seed": 3}):
        shared = jaxsteer.generate(
            model, prompts, max_new_tokens=N_NEW, samples_per_prompt=k, interventions=[steer], **kw
        )
        plain = jaxsteer.generate(model, repeated, max_new_tokens=N_NEW, interventions=[steer], **kw)
        np.testing.assert_array_equal(shared.tokens, plain.tokens)
        np.testing.assert_array_equal(shared.lengths, plain.lengths)
        np.testing.assert_allclose(shared.logprobs, plain.logprobs, atol=1e-5)
        np.testing.assert_array_equal(shared.prompt_tokens, plain.prompt_tokens)
        np.testing.assert_array_equal(shared.prompt_mask, plain.prompt_mask)
    assert len({tuple(r) for r in shared.tokens[:k].tolist()}) > 1  # the k samples of a prompt differ
    with pytest.raises(ValueError, match="samples_per_prompt"):
        jaxsteer.generate(model, prompts, max_new_tokens=2, samples_per_prompt=0)
