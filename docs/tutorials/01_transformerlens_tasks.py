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
# # Five TransformerLens tasks in jaxsteer
#
# Each task below takes at most six lines after the imports and the load. Open this file in
# Jupyter with jupytext (`pip install jupytext`; "Open as notebook"), or run it as a script:
# `python docs/tutorials/01_transformerlens_tasks.py`. `tests/integration/test_docs.py` runs every cell
# (the last two, which train for a few minutes, only with `--docs-slow`).

# %%
import numpy as np

import jaxsteer
from jaxsteer import analysis as A
from jaxsteer.steering import contrast_vector

model, tok = jaxsteer.load("smollm2-135m-instruct")
model  # Model(LlamaForCausalLM, 30 layers, d_model=576, ...)

# %% [markdown]
# ## 1. Run with a cache, then the logit lens
#
# `run_with_cache` records every site; the cache takes `(site, layer)` and TransformerLens names.
# `accumulated_resid` stacks the residual entering each layer plus the final one, and the lens
# shows what each would predict at the last token, as probabilities.

# %%
tokens = jaxsteer.to_tokens(tok, "The capital of France is")
logits, cache = jaxsteer.run_with_cache(model, tokens)
stack, labels = A.accumulated_resid(cache)  # [L + 1, B, T, d]
lens = A.logit_lens(model, stack[:, 0, -1], tokenizer=tok, k=3, labels=labels)
print(lens.table(probs=True))
assert np.allclose(cache["blocks.10.hook_resid_post"], cache["resid_post", 10])

# %% [markdown]
# ## 2. Steer at one layer and compare
#
# A contrastive vector (mean activation difference of two prompt sets), added at layer 10 only.

# %%
v = contrast_vector(
    model, tok, ["I love this!", "What a joyful day."], ["I hate this.", "What a gloomy day."], chat=False
)
steer = jaxsteer.Steer(1.5 * v[10], layers=(10,))
for name, ivs in (("base", []), ("steered", [steer])):
    out = jaxsteer.generate(
        model, ["Tell me about your day."], tokenizer=tok, interventions=ivs, max_new_tokens=20, greedy=True
    )
    print(f"{name}: {out.texts[0]!r}")

# %% [markdown]
# ## 3. Patch every layer x position, with a plot
#
# One compiled call patches the clean run's `resid_pre` into the corrupted run at every (layer,
# position) and reports the normalised logit difference (1 = clean behaviour restored). In a
# notebook the result displays as a labelled table; `plot` writes the heatmap.

# %%
clean, corrupt = A.tokenize_pair(tok, "The capital of France is", "The capital of Italy is")
res = A.activation_patching(model, clean, corrupt, site="hook_resid_pre", answers=(" Paris", " Rome"), tokenizer=tok)
res.plot("patching_resid_pre.png")
res

# %% [markdown]
# ## 4. Probe a layer
#
# Is the first operand of `a + b =` above 50? Harvest layer 10's residual at the last token and
# fit a linear probe; its unit direction is a ready-made steering vector.

# %%
a, b = np.random.default_rng(0).integers(10, 100, size=(2, 120))
toks = np.concatenate([jaxsteer.to_tokens(tok, f"{x} + {y} =") for x, y in zip(a, b, strict=True)])
acts = A.harvest(model, toks, layers=(10,))
probe = A.train_probes(acts, (a >= 50).astype(int), seed=0).at(10)
print(probe, "\nsteering vector:", probe.directions.shape)

# %% [markdown]
# ## 5. Load a trained run and generate as it trained
#
# `load_run` gives back the model, tokenizer, trained vectors and the prompt format the run used,
# so generation sees exactly the training prompt. (Training here takes a few minutes on a CPU.)

# %% docs-test: slow
from jaxsteer.train import load_config, train

train(
    load_config(
        "experiments/smollm2_arithmetic_steering.yaml",
        ["steps=2", "output_dir=runs/tutorial", "eval.before=false", "eval.after=false"],
    )
)

# %% docs-test: slow
run = jaxsteer.load_run("runs/tutorial")
out = run.generate(["What is 17 + 25?"], greedy=True)
print(run, out.texts[0], run.vectors.shape)
