"""What the routes that read the request themselves accept, for /openapi.json (hence /docs
and schemathesis): FastAPI cannot see it in their signatures, so the routes pass these as
`openapi_extra`.

Example: ``@app.post("/predictions/{name}", openapi_extra=INPUT_BODY)``
"""

from __future__ import annotations

from typing import Any

_CELL = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}]}
_ROW = {"type": "object", "additionalProperties": _CELL, "description": "raw column -> value"}
INPUT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Image models: the image file's bytes (any image/* type), raw or as the "
        "multipart field `data`. Tabular models: JSON, one row, a list of rows or "
        '{"rows": [...]}.',
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"data": {"type": "string", "format": "binary"}},
                    "required": ["data"],
                }
            },
            "application/json": {
                "schema": {
                    "anyOf": [
                        _ROW,
                        {"type": "array", "items": _ROW},
                        {
                            "type": "object",
                            "properties": {"rows": {"type": "array", "items": _ROW}},
                            "required": ["rows"],
                        },
                    ]
                }
            },
        },
    }
}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = schema or {"type": "string"}
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_TARGET = _query("target", "images: class name(s) or index(es), comma-separated")
_FORMAT = _query("format", "overlay format", {"type": "string", "enum": ["png", "jpeg", "webp"]})
EXPLAIN_QUERY: dict[str, Any] = {
    "parameters": [
        _query(
            "methods",
            "methods, comma-separated; their parameters as further query "
            "parameters, `param` or `method.param` (GET /models/{name} lists them)",
        ),
        _TARGET,
        _query("overlay", "images: include overlays", {"type": "boolean"}),
        _FORMAT,
    ]
}
HEATMAP_QUERY: dict[str, Any] = {
    "parameters": [
        _query(
            "method",
            "the method whose map is drawn (default activation); its parameters "
            "as further query parameters",
        ),
        _TARGET,
        _FORMAT,
    ]
}
