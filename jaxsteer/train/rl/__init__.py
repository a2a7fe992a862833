"""The RL learner: rollouts (`rollout`), loss terms (`losses`), the jitted update (`step`) and the
loop on a `Run` (`learner`). Scoring completions is shared with SFT: `jaxsteer.train.scoring`."""

from .learner import RLLearner, Setup, setup_training, train_rl
from .losses import group_advantages, policy_loss
from .rollout import RolloutBatch, collect
from .step import StepSpec, compile_step

__all__ = [
    "RLLearner",
    "Setup",
    "setup_training",
    "train_rl",
    "group_advantages",
    "policy_loss",
    "RolloutBatch",
    "collect",
    "StepSpec",
    "compile_step",
]
