"""The RL learner: rollouts (`rollout`), scoring (`scoring`), loss terms (`losses`), the jitted
update (`step`) and the loop on a `Run` (`learner`)."""

from .learner import RLLearner, Setup, setup_training, train_rl
from .losses import group_advantages, policy_loss
from .rollout import RolloutBatch, collect
from ..scoring import grouped_sequence_logprobs, sequence_logprobs, token_logprobs
from .step import StepSpec, compile_step

__all__ = ["RLLearner", "Setup", "setup_training", "train_rl", "group_advantages", "policy_loss", "RolloutBatch",
           "collect", "grouped_sequence_logprobs", "sequence_logprobs", "token_logprobs", "StepSpec", "compile_step"]
