"""The ES learner: search spaces (`spaces`), strategies (`strategies`), population evaluation
through the public sampler (`population`) and the loop on a `Run` (`learner`)."""

from ..config import ES_ALGORITHMS, ESConfig
from .learner import ESLoopSpec, ESResult, build_es, es_space_for_run, load_es_policy, run_es, train_es
from .population import (
    PopulationOutput,
    center_member,
    es_generation,
    member_mesh,
    population_generate,
    population_program,
    score_population,
    update_strategy,
)
from .spaces import (
    EggrollSpace,
    ESSAProductSpace,
    ESSASpace,
    FullSpace,
    SteeringSpace,
    TrainableSpace,
    essa_product_space,
    essa_space,
)
from .strategies import CMAES, OpenES, SepCMAES, fitness

__all__ = [
    "ES_ALGORITHMS",
    "ESConfig",
    "ESLoopSpec",
    "ESResult",
    "build_es",
    "es_space_for_run",
    "load_es_policy",
    "run_es",
    "train_es",
    "PopulationOutput",
    "center_member",
    "es_generation",
    "member_mesh",
    "population_generate",
    "population_program",
    "score_population",
    "update_strategy",
    "EggrollSpace",
    "ESSASpace",
    "ESSAProductSpace",
    "FullSpace",
    "SteeringSpace",
    "TrainableSpace",
    "essa_space",
    "essa_product_space",
    "CMAES",
    "OpenES",
    "SepCMAES",
    "fitness",
]
