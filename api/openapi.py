"""OpenAPI: documented error responses with examples, and one error shape in the document.

FastAPI documents request-validation failures with its own `HTTPValidationError` schema;
Tally answers them as `{"error": {"code", "message"}}` like every other error, so the
document is patched to say so. It is also patched to state what validation enforces where
FastAPI cannot say it: an optional query parameter is absent, never null; and the reports'
`from` and `to` go together (`_pair_range`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.auth import api_routes, route_scope
from schemas.api import ErrorBody
from tally.domain.alerts import meters

# code -> (HTTP status, an example message)
ERRORS: dict[str, tuple[int, str]] = {
    "invalid_request": (422, "amount: Input should be greater than or equal to 1"),
    "unknown_plan": (400, "plan 'gold' does not exist; use one of free, developer, pro"),
    "invalid_change": (400, "a trial needs trial_ends_at: when it ends"),
    "unauthorized": (401, "send your API key as `Authorization: Bearer <key>`"),
    "payment_required": (
        402,
        "the Pro trial ended at 2026-06-10T00:00:00Z: add a payment method or downgrade to "
        "the free plan to resume runs",
    ),
    "forbidden": (403, "admin is disabled: set TALLY_ADMIN_KEY to enable it"),
    "plan_limit_error": (
        403,
        "model 'gpt-4o' is not available in managed mode on the Free plan (allowed: "
        "gpt-4o-mini): use an allowed model or upgrade to a plan with BYOK",
    ),
    "target_refused": (
        400,
        "the host 'hooks.internal' resolves to a loopback, private or link-local address"
        " (10.0.0.7): webhooks go to public addresses only",
    ),
    "unknown_meter": (400, "no meter 'tokenz': use one of tokens, tool_calls, requests, ..."),
    "not_found": (404, "org 'acme' does not exist"),
    "conflict": (409, "org 'acme' exists already"),
    "billing_limit_reached": (
        429,
        "the tool-call allowance of the Free plan is used up: 1000 of 1000 this period, 1 "
        "more asked; it resets at 2026-07-01T00:00:00Z, or upgrade to lift it now",
    ),
    "rate_limited": (
        429,
        "the per-minute burst of the Free plan is reached: 10 of 10 requests this minute; "
        "retry after 2026-06-10T12:35:00Z (in 24 s) or upgrade for a higher burst",
    ),
    "concurrency_limit": (
        429,
        "3 of 3 concurrent sessions of the Free plan are in use: end a session and retry, "
        "or upgrade for more",
    ),
    "quota_unavailable": (
        503,
        "usage figures are still loading after a restart: retry in a second",
    ),
}

_DESCRIPTIONS = {
    400: "The request names something that does not exist or cannot be done",
    401: "Missing, unknown or revoked key",
    402: "Trial ended or payment past due: new runs are paused, reads keep working",
    403: "Not allowed on this plan, a key without the scope the route needs, or admin disabled",
    404: "No such org, key, webhook endpoint or delivery",
    409: "Conflicts with the current state",
    422: "The request does not validate",
    429: "A limit is reached; `Retry-After` says when to retry a burst",
    503: "Figures not loaded yet; retry after `Retry-After` seconds",
}

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until the window ends (`rate_limited`, `quota_unavailable`).",
        "schema": {"type": "integer"},
    }
}

FRESHNESS = {
    "X-Tally-Counters-As-Of": {
        "description": "The time (UTC) the counters are current to.",
        "schema": {"type": "string", "format": "date-time"},
    },
    "X-Tally-Staleness-Ms": {
        "description": "Milliseconds between that time and this answer.",
        "schema": {"type": "integer"},
    },
    "X-Tally-Stream-Lag": {
        "description": "Events on the broker not yet counted.",
        "schema": {"type": "integer"},
    },
}


def errors(*codes: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error codes, grouped by status, with examples."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        status, message = ERRORS[code]
        entry = out.setdefault(
            status,
            {
                "model": ErrorBody,
                "description": _DESCRIPTIONS[status],
                "content": {"application/json": {"examples": {}}},
            },
        )
        if status in (429, 503):
            entry["headers"] = RETRY_AFTER
        example = {"error": {"code": code, "message": message}}
        entry["content"]["application/json"]["examples"][code] = {"value": example}
    return out


def fresh(model: type, description: str = "Successful read") -> dict[int | str, dict[str, Any]]:
    """The 200 response of a quota read, with its freshness headers documented."""
    return {200: {"model": model, "description": description, "headers": FRESHNESS}}


# The code an error response of each status most likely carries, for routes that document
# an error without an example of their own.
_DEFAULT_CODES = {
    400: "invalid_parameter",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def _fill_error_examples(op: dict[str, Any]) -> None:
    for status, response in op.get("responses", {}).items():
        if not status.isdigit() or int(status) < 400 or status == "422":
            continue
        content = response.get("content", {}).get("application/json")
        if content is None or content.get("examples") or content.get("example"):
            continue
        code = _DEFAULT_CODES.get(int(status), "http_error")
        message = response.get("description") or code
        content["examples"] = {code: {"value": {"error": {"code": code, "message": message}}}}


_RANGE = (
    "`from` and `to` go together: both, for the UTC days from `from` up to (not including)"
    " `to`, at most 366 days; or neither, for the org's current billing period. One without"
    " the other is refused (400 `invalid_parameter`)."
)


def _absent_not_null(param: dict[str, Any]) -> None:
    """An optional query parameter is left out, never sent as null: `T | None` is `T`."""
    schema = param.get("schema", {})
    options = schema.get("anyOf")
    if param.get("in") != "query" or not options or {"type": "null"} not in options:
        return
    rest = [o for o in options if o != {"type": "null"}]
    if len(rest) == 1:
        del schema["anyOf"]
        schema.update({**rest[0], **schema})


def _pair_range(op: dict[str, Any]) -> None:
    """`from` and `to` as one query parameter: an object exploded into `from=...&to=...`
    (OpenAPI's `style: form, explode: true`), whose schema says that each needs the other."""
    params = op.get("parameters", [])
    query = {p["name"]: p for p in params if p.get("in") == "query"}
    if "from" not in query or "to" not in query:
        return
    days = {name: {**query[name]["schema"], "type": "string"} for name in ("from", "to")}
    for day in days.values():
        day.pop("title", None)
    pair = {
        "name": "range",
        "in": "query",
        "required": False,
        "style": "form",
        "explode": True,
        "description": _RANGE,
        "schema": {
            "type": "object",
            "properties": days,
            "dependentRequired": {"from": ["to"], "to": ["from"]},
            "additionalProperties": False,
        },
    }
    op["parameters"] = [pair if p is query["from"] else p for p in params if p is not query["to"]]
    op["description"] = f"{op.get('description', '')}\n\n{_RANGE}".strip()


def _document_scopes(app: FastAPI, doc: dict[str, Any]) -> None:
    """Each org route's scope (`api.auth.require_scope`), in its description, as
    `x-required-scope`, and with the 403 `forbidden` a key without it gets."""
    for route in api_routes(app):
        scope = route_scope(route)
        if scope is None:
            continue
        for method in route.methods or ():
            op = doc["paths"].get(route.path_format, {}).get(method.lower())
            if op is None:
                continue
            op["x-required-scope"] = scope
            note = f"Needs a key with the `{scope}` scope."
            op["description"] = f"{op.get('description', '')}\n\n{note}".strip()
            forbidden = op.setdefault("responses", {}).setdefault(
                "403",
                {
                    "description": _DESCRIPTIONS[403],
                    "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}},
                },
            )
            content = forbidden.setdefault("content", {}).setdefault("application/json", {})
            content.setdefault("schema", {"$ref": _ERROR_REF})
            message = f"this key lacks the {scope!r} scope (it has: quota:read): issue a key"
            example = {"value": {"error": {"code": "forbidden", "message": message}}}
            content.setdefault("examples", {})["forbidden"] = example


_ERROR_REF = "#/components/schemas/ErrorBody"


def install(app: FastAPI) -> None:
    """Document every validation failure with the one error shape."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
            servers=app.servers,
        )
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        _document_scopes(app, doc)
        for path in doc.get("paths", {}).values():
            for op in path.values():
                _fill_error_examples(op)
                for param in op.get("parameters", []):
                    _absent_not_null(param)
                _pair_range(op)
                invalid = op.get("responses", {}).get("422")
                if invalid is None:
                    continue
                content = invalid.setdefault("content", {}).setdefault("application/json", {})
                content["schema"] = ref
                if "examples" not in content:
                    example = {"code": "invalid_request", "message": ERRORS["invalid_request"][1]}
                    content["examples"] = {"invalid_request": {"value": {"error": example}}}
                invalid["description"] = _DESCRIPTIONS[422]
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorBody" not in schemas:
            body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(body.pop("$defs", {}))
            schemas["ErrorBody"] = body
        for rule in ("MeterAt", "MeterPercent"):  # the meters rules may name, from the domain
            if rule in schemas:
                schemas[rule]["properties"]["meter"]["enum"] = meters()
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
