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

    attribution = method.attribute(ImageBatch(model, model[0], inputs, targets))
    maps = attribution.maps

    assert maps.shape == (2, 8, 8)
    with torch.no_grad():
        gain = model(inputs) - model(torch.zeros_like(inputs))
    for i, target in enumerate(targets):
        assert maps[i].sum() == pytest.approx(float(gain[i, target]), abs=1e-3)  # model is linear
        assert abs(attribution.extra(i)["convergence_delta"]) < 1e-3


def test_parameters_are_checked_on_entry() -> None:
    assert "integrated_gradients" in methods_for("image")
    assert "integrated_gradients" in methods_for("tabular")
    with pytest.raises(SchemaError, match="steps"):
        build("tabular", "integrated_gradients", {"steps": 0})


def test_one_instance_serves_two_batches_with_their_own_extras() -> None:
    """An explainer keeps nothing between calls: each batch's extras come back with it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    method = build("image", "integrated_gradients", {"steps": 4, "baseline": "zeros"})
    first_batch = ImageBatch(model, model[0], torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    second_batch = ImageBatch(model, model[0], torch.randn(3, 3, 8, 8) * 5, torch.tensor([2, 0, 1]))

    first = method.attribute(first_batch)
    second = method.attribute(second_batch)
    first_again = method.attribute(first_batch)

    assert len(first.extras) == 2 and len(second.extras) == 3
    assert first.extras == first_again.extras
    assert [e["convergence_delta"] for e in first.extras] != [
        e["convergence_delta"] for e in second.extras[:2]
    ]
    assert not hasattr(method, "last_delta")
