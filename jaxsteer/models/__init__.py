"""Model ports: config, parameter pytree, the decoder, interventions, generation and loading."""

from .config import ModelConfig, RopeConfig, UnsupportedConfigError, from_hf_config
from .controls import Conditional, OnTokens, RowSteer, compose
from .decoder import Trace, embed, forward, prepare_controls, run_layers, run_with_cache, unembed
from .generate import Generation, generate
from .interventions import SITES, Ablate, AdaptiveSteer, Affine, CrossRunPatch, Hook, OnRuns, Patch, Steer
from .params import Model, init_params, param_shapes
from .sites import TL_ALIASES
from .tokens import to_str_tokens, to_string, to_tokens
