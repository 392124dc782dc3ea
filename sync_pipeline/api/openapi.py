"""The OpenAPI 3 document, generated from the operation list and the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from . import schemas
from .errors import TITLES

REF = "#/components/schemas/{model}"
MERCHANT_ID_SCHEMA = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,39}$"}


def _query_schema(param) -> dict[str, Any]:
    if param.kind == "time":
        return {"type": "string", "format": "date-time"}
    if param.name == "merchantId":
        return MERCHANT_ID_SCHEMA
    if param.kind == "string":
        return {"type": "string", "maxLength": 512}
    schema: dict[str, Any] = {"type": "integer", "minimum": param.minimum, "maximum": param.maximum}
    if param.default is not None:
        schema["default"] = param.default
    return schema


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def build_openapi(operations, base_path: str) -> dict[str, Any]:
    components: dict[str, Any] = {}
    error_ref = _schema(schemas.ErrorEnvelope, components)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        parameters = []
        if "{entityType}" in op.path:
            parameters.append(
                {"name": "entityType", "in": "path", "required": True,
                 "schema": {"type": "string", "enum": ["PRODUCT", "COLLECTION"]}}
            )
        if "{batchId}" in op.path:
            parameters.append({"name": "batchId", "in": "path", "required": True, "schema": {"type": "string"}})
        if "{recordId}" in op.path:
            parameters.append({"name": "recordId", "in": "path", "required": True, "schema": {"type": "string"}})
        if "{merchantId}" in op.path:
            parameters.append({"name": "merchantId", "in": "path", "required": True, "schema": MERCHANT_ID_SCHEMA})
        for param in op.query:
            parameters.append(
                {"name": param.name, "in": "query", "required": False, "description": param.description,
                 "schema": _query_schema(param)}
            )
        status, model = op.ok
        ok_body = {"application/json": {"schema": _schema(model, components)}}
        responses: dict[str, Any] = {
            str(code): {"description": op.summary, "content": ok_body} for code in (status, *op.also_ok)
        }
        for code in op.errors:
            if code == 503 and op.access == "public":
                responses["503"] = {"description": "the state store is unreachable",
                                    "content": {"application/json": {"schema": _schema(schemas.Health, components)}}}
                continue
            response = {"description": TITLES[code], "content": {"application/json": {"schema": error_ref}}}
            if code == 429:
                response["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
            responses[str(code)] = response
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "parameters": parameters,
            "responses": responses,
        }
        if op.description:
            operation["description"] = op.description
        if op.access != "public":
            operation["security"] = [{"bearer": []}]
        else:
            operation["security"] = []
        if op.body is not None:
            operation["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": {"schema": _schema(op.body, components)}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sync_pipeline Sync API",
            "version": "1.0.0",
            "description": "Ask for a catalogue sync and read how the last one went. The bearer token decides the "
                           "merchant; the operator token names it with ?merchantId= and manages the registry. Only "
                           "one sync per (merchant, entity type) is ever queued or in progress.",
        },
        "servers": [{"url": base_path}],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
