# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # SAE features of correct vs incorrect rollouts
#
# Sample several answers per arithmetic problem, score them, and compare a sparse autoencoder's
# feature activations between correct and incorrect rollouts (the SAE study of arXiv 2509.06608;
# `experiments/sae_rollout_features.py` is the full version). A trained SAE comes from
# `jaxsteer sae train experiments/sae_topk_small.yaml` (several minutes; the last cell uses it).
# So that this notebook runs in seconds in CI, the first pass uses a freshly initialised SAE of
# the same shape: its "features" are random directions, so read that table as a pipeline check,
# not a finding.

# %%
import jax
import numpy as np

import jaxsteer
from jaxsteer import sae
from jaxsteer.train.data import arithmetic_problems
from jaxsteer.train.rewards import correctness_reward

model, tok = jaxsteer.load("smollm2-135m-instruct")
problems = arithmetic_problems(8, digits=2, seed=1, split="test")
out = jaxsteer.generate(
    model, [p.prompt for p in problems], tokenizer=tok, samples_per_prompt=4, max_new_tokens=12, temperature=1.0, seed=0
)
refs = [p.answer for p in problems for _ in range(4)]
correct = np.array([correctness_reward("", text, ref) > 0 for text, ref in zip(out.texts, refs, strict=True)])
print(f"{correct.sum()} of {len(correct)} rollouts correct")

# %% [markdown]
# Per rollout, each feature's mean activation over the completion tokens: one `forward` of prompt +
# completion recording the SAE's site, `sae.encode` at its layer, a masked mean.


# %%
def completion_features(s, out):
    tokens, mask = out.sequences()
    completion = mask * (np.arange(tokens.shape[1]) >= out.prompt_tokens.shape[1])
    _, trace = jaxsteer.forward(model, tokens, attention_mask=mask, record=s.config.site, return_logits=False)
    z = sae.encode(s, trace[s.config.site, s.config.layer])  # [N, T, d_sae]
    return np.asarray((z * completion[..., None]).sum(1) / np.maximum(completion.sum(1, keepdims=True), 1))


def compare(feats, correct, top=5):
    diff = feats[correct].mean(0) - feats[~correct].mean(0) if correct.any() and (~correct).any() else feats.mean(0) * 0
    order = np.argsort(diff)
    return {
        "more in correct": [(int(i), round(float(diff[i]), 3)) for i in order[::-1][:top]],
        "more in incorrect": [(int(i), round(float(diff[i]), 3)) for i in order[:top]],
    }


config = sae.SAEConfig(kind="topk", d_in=576, d_sae=1152, k=32, site="resid_post", layer=15)
untrained = sae.init_sae(config, jax.random.PRNGKey(0))
compare(completion_features(untrained, out), correct)

# %% [markdown]
# With a trained SAE (train it once; `sae.load_saelens` also reads SAELens folders):

# %% docs-test: slow; sub: sae_topk_small.yaml"]) => sae_topk_small.yaml", "steps=20"])
from jaxsteer import cli

cli.main(["sae", "train", "experiments/sae_topk_small.yaml"])
trained = sae.load_saelens("runs/sae_topk_small/sae")
compare(completion_features(trained, out), correct)
