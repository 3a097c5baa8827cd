"""Integrated Gradients on images: signed maps that add up to the target's logit change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from service.errors import SchemaError
from service.explain import ImageBatch, build, methods_for


def test_image_maps_add_up_to_the_logit_change_from_black() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    inputs, targets = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    method = build(
        "image",
        "integrated_gradients",
        {"steps": 16, "internal_batch_size": 8, "baseline": "zeros"},
    )

    maps = method.explain(ImageBatch(model, model[0], inputs, targets))

    assert maps.shape == (2, 8, 8)
    with torch.no_grad():
        gain = model(inputs) - model(torch.zeros_like(inputs))
    for i, target in enumerate(targets):
        assert maps[i].sum() == pytest.approx(float(gain[i, target]), abs=1e-3)  # model is linear
        assert abs(method.extras(i)["convergence_delta"]) < 1e-3


def test_parameters_are_checked_on_entry() -> None:
    assert "integrated_gradients" in methods_for("image")
    assert "integrated_gradients" in methods_for("tabular")
    with pytest.raises(SchemaError, match="steps"):
        build("tabular", "integrated_gradients", {"steps": 0})
