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
# # Train steering vectors from Python, then use them
#
# RL-train one steering vector per layer on 2-digit addition (the README's main job), load the run
# back with its prompt format, and use the vectors: generate, logit lens, and patch a single
# layer's vector to see where it matters. The training cell takes about 2.5 minutes on two idle
# CPU cores (20 steps); `tests/integration/test_docs.py --docs-slow` runs it with 2 steps.

# %%
import numpy as np

import jaxsteer
from jaxsteer import analysis as A
from jaxsteer.train import load_config, train

# %% docs-test: slow; sub: "steps=20" => "steps=2", "eval.n=16"
cfg = load_config("experiments/smollm2_arithmetic_steering.yaml", ["steps=20", "output_dir=runs/tutorial_vectors"])
result = train(cfg)  # prints the held-out accuracy before / after and the exported files
result.eval_after and result.eval_after["greedy_acc"]

# %% [markdown]
# `load_run` restores the checkpoint: the model, the tokenizer, the trained `Steer`, and
# `encode`, which formats a prompt exactly as training did (here the chat template without a
# system prompt, as the config says).

# %% docs-test: slow
run = jaxsteer.load_run("runs/tutorial_vectors")
model, tok, vectors = run.model, run.tokenizer, run.vectors  # vectors: [L, d]
print(run)
print(tok.decode(run.encode("What is 17 + 25?")))
out = run.generate(["What is 17 + 25?", "What is 48 + 36?"], greedy=True)
print(out.texts)

# %% [markdown]
# The logit lens of each layer's vector (raw `W_U s_l`, as the steering paper's code does), and
# the same vectors applied by hand at a chosen scale: `run.interventions` is just a `Steer`.

# %% docs-test: slow
print(A.vector_lens(model, vectors, tokenizer=tok, k=5).table())
prompt = [run.encode("What is 17 + 25?")]
for scale in (0.0, 1.0, 2.0):
    steered = jaxsteer.generate(
        model,
        prompt,
        tokenizer=tok,
        interventions=[jaxsteer.Steer(vectors, scale=scale)],
        max_new_tokens=12,
        greedy=True,
    )
    print(scale, repr(steered.texts[0]))

# %% [markdown]
# Which layers' vectors matter? Keep one layer's vector at a time and measure the log-probability
# of the token the fully steered model says first. `jax.lax.map` over 30 one-hot layer masks runs
# the sweep as one compiled program, the vector array closed over (no tracer leaks into the checks).

# %% docs-test: slow
import jax
import jax.numpy as jnp

tokens = jnp.asarray(prompt)
answer = int(run.generate(["What is 17 + 25?"], greedy=True, max_new_tokens=1).tokens[0, 0])  # steered first token
L = model.config.n_layers


def logprob_with(mask):  # mask [L]: which layers keep their vector
    logits, _ = jaxsteer.forward(model, tokens, interventions=[jaxsteer.Steer(vectors, mask=mask)])
    return jax.nn.log_softmax(logits[0, -1])[answer]


per_layer = jax.lax.map(logprob_with, jnp.eye(L))
print(f"log p({tok.decode([answer])!r}) with only layer l steered:", np.round(np.asarray(per_layer), 2))
print("all layers:", float(logprob_with(jnp.ones(L))), " none:", float(logprob_with(jnp.zeros(L))))
