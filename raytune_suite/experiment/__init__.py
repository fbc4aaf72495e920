"""The experiment file: typed models, Ray Tune's search-space vocabulary, ``--set``."""

from raytune_suite.experiment.models import ExperimentSpec
from raytune_suite.experiment.spec import apply_override, load_spec, mutation_space, validate

__all__ = ["ExperimentSpec", "apply_override", "load_spec", "mutation_space", "validate"]
