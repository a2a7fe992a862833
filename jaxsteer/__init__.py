"""jaxsteer: pure-functional JAX ports of Hugging Face decoders with the residual stream as data.

model, tokenizer = jaxsteer.load("smollm2-135m-instruct")
logits, trace = jaxsteer.forward(model, tokens, record=("resid_post",))
out = jaxsteer.generate(model, ["What is 2+3?"], tokenizer=tokenizer,
                        interventions=[jaxsteer.Steer(vectors)])
"""

from .errors import InputError, JaxsteerError, NotFoundError
from .models import (
    SITES,
    TL_ALIASES,
    Ablate,
    AdaptiveSteer,
    Affine,
    Conditional,
    CrossRunPatch,
    Generation,
    Hook,
    Model,
    ModelConfig,
    OnRuns,
    OnTokens,
    Patch,
    RowSteer,
    Steer,
    Trace,
    UnsupportedConfigError,
    compose,
    forward,
    from_hf_config,
    generate,
    init_params,
    prepare_controls,
    run_with_cache,
    to_str_tokens,
    to_string,
    to_tokens,
)
from .models.loading import load


def load_run(directory: str, **kwargs):
    """A trained run directory -> `LoadedRun` (model, tokenizer, trained interventions or weights,
    the prompt formatter it trained with); see `jaxsteer.train.load_run`."""
    from .train import load_run as load_trained_run

    return load_trained_run(directory, **kwargs)


__version__ = "0.1.0"
