"""Explanation methods: one module per method, one registry (name -> class)."""

# importing a method module registers its methods
from service.explain import (  # noqa: F401
    activation,
    gradcam,
    gradient_shap,
    integrated_gradients,
    occlusion,
    saliency,
    smoothgrad,
)
from service.explain.base import (
    REGISTRY,
    Attribution,
    Explainer,
    ImageBatch,
    Param,
    TabularAttribution,
    TabularBatch,
    build,
    methods_for,
)

__all__ = [
    "REGISTRY",
    "Attribution",
    "Explainer",
    "ImageBatch",
    "Param",
    "TabularAttribution",
    "TabularBatch",
    "build",
    "methods_for",
]
