"""What /openapi.json says beyond what FastAPI reads from the routes: the error answers
of every route, and the JSON bodies the send routes parse by hand (see send.py)."""

from __future__ import annotations

from typing import Any

import pydantic

from mailgate.http import models as m

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": m.ErrorOut, "description": text}
    for code, text in [
        (400, "Malformed JSON"),
        (401, "Missing or invalid API key"),
        (403, "Scope or sender domain not allowed"),
        (404, "Not found"),
        (409, "Idempotency-Key reused with another request; the domain exists; the key signs"),
        (413, "Body too large"),
        (415, "Wrong Content-Type"),
        (422, "A field is invalid; `field` names it"),
        (429, "Rate limited; see Retry-After"),
        (503, "Storage unavailable; see Retry-After"),
    ]
}

# The request bodies parsed by hand, in the order their schemas join the components.
BODIES: tuple[type[pydantic.BaseModel], ...] = (
    m.SendRequest,
    m.BatchRequest,
    m.RawRequest,
    m.DomainRequest,
    m.WebhookRequest,
    m.WebhookUpdate,
)


def request_body(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """openapi_extra for a JSON body parsed by hand; its schema is in body_schemas()."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def body_schemas() -> dict[str, Any]:
    """The components/schemas entries of BODIES and the models they hold."""
    schemas: dict[str, Any] = {}
    for model in BODIES:
        schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas
