"""The SFT learner: reference batches (`batches`) and the NLL update and loop on a `Run` (`learner`)."""

from .batches import ReferenceBatch, reference_batch, target_ids
from .learner import SFTLearner, SFTSpec, sft_spec, sft_step, train_sft

__all__ = [
    "ReferenceBatch",
    "reference_batch",
    "target_ids",
    "SFTLearner",
    "SFTSpec",
    "sft_spec",
    "sft_step",
    "train_sft",
]
