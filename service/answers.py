"""The JSON answers of glimpse's explanations, one function per shape, shared by every door
that answers glimpse's own `/explanations/{name}` JSON: the HTTP door (service.http), the Open
Inference Protocol's explanation extension (service.oip_http) and TorchServe's explanations
route (service.torchserve), so that all of them answer the same keys and values.

Example: ``explanation_body("cnn", results, {"decode": 1.2})`` -> ``{"model": "cnn", ...}``
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.results import Explanation, ImageResult, MapResult, RowResult, TargetMaps


def explanation_body(
    name: str, results: Sequence[Explanation], timings: dict[str, float]
) -> dict[str, Any]:
    """Rows: `{"model", "rows", "timings_ms"}`. An image: its fields at the top level, the
    first target's maps in `explanations`, and `by_target` when several targets were asked."""
    rows = [row_json(r) for r in results if isinstance(r, RowResult)]
    images = [r for r in results if isinstance(r, ImageResult)]
    if not images:
        return {"model": name, "rows": rows, "timings_ms": timings}
    first = images[0]
    body: dict[str, Any] = {
        "model": name,
        "target": _target_json(first.targets[0]),
        "prediction": first.prediction,
        "explanations": _maps_json(first.targets[0]),
        "timings_ms": timings,
    }
    if len(first.targets) > 1:
        body["by_target"] = [
            {"target": _target_json(t), "explanations": _maps_json(t)} for t in first.targets
        ]
    return body


def row_json(row: RowResult) -> dict[str, Any]:
    return {
        "prediction": row.prediction,
        "base_value": row.base_value,
        "attributions": row.attributions,
        "convergence_delta": row.convergence_delta,
        **({"extras": row.extras} if row.extras else {}),
    }


def _target_json(entry: TargetMaps) -> dict[str, Any]:
    target = entry.target
    return {"index": target.index, "label": target.label, "probability": target.probability}


def _maps_json(entry: TargetMaps) -> dict[str, dict[str, Any]]:
    return {m.method: map_json(m) for m in entry.maps}


def map_json(result: MapResult) -> dict[str, Any]:
    """A map as JSON: its own fields win over any extra of the same name."""
    values = np.round(result.values, 6)
    body: dict[str, Any] = {
        **result.extras,
        "height": int(values.shape[0]),
        "width": int(values.shape[1]),
        "values": values.tolist(),
        "signed": result.signed,
        "reduction": result.reduction,
    }
    if result.overlay is not None:
        body[f"overlay_{result.overlay_format}"] = base64.b64encode(result.overlay).decode()
        if result.overlay_size is not None:
            body["overlay_size"] = list(result.overlay_size)
        body["overlay_scaled"] = result.overlay_scaled
        body["overlay_scale"] = round(result.overlay_scale, 4)
    return body
