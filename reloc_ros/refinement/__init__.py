"""Featuremetric refinement (PixLoc-style): reference model building/storage and the LM pose refiner."""
from .reference import DEFAULT_CONF, ReferenceBuildError, ReferenceModel, build_reference, load_reference
from .refiner import DEFAULT_REFINER_CONF, FeaturemetricRefiner, RefinementResult, refine_from_prior

__all__ = ["DEFAULT_CONF", "DEFAULT_REFINER_CONF", "ReferenceBuildError", "ReferenceModel", "build_reference",
           "load_reference", "FeaturemetricRefiner", "RefinementResult", "refine_from_prior"]
