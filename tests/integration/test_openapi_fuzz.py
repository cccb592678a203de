"""schemathesis over the OpenAPI document, with every check it has.

Cases are generated from the document served by the app, in-process: Hypothesis runs in a
worker thread and sends each case through schemathesis' own ASGI transport to a bridge that
runs the request on the test event loop, so the real broker, counter table and chDB store
answer it, and the checks that send requests of their own (`ignored_auth`: the same request
without the key, and with a wrong one) reach the same app. Bounded: 350 cases and a sweep of
the undocumented methods, about 15 seconds. Every failure is collected and reported at the
end. A case whose `Authorization` schemathesis made wrong (or left out) is sent so; any
other is sent with a real key (the admin key under /api/v2/admin).

All of schemathesis' checks run on every case (as the CLI's `--checks all`), with one
exclusion, written down in `_POSITIVE_REFUSALS`: a refusal of a request the document allows
is not judged by `positive_data_acceptance` when it depends on the state (a plan the
catalogue lacks, a change the subscription does not allow, a trial that ended) or on two
values together (`to` after `from`, at most 366 days apart): no schema can rule those out,
and the document says them in words. Everything else the validation enforces the document
states (enums, formats, patterns, date bounds, `from` and `to` together, `POST
/api/v2/events` items of any JSON type), so any other refusal of a valid request fails.
`unsupported_method` and `missing_required_header` judge only cases of schemathesis' coverage
phase, which `as_strategy` does not make: the sweep at the end sends every undocumented
method to every path and asks for 405 with the `Allow` of the document, and the negative
cases send requests without `Authorization`, the one required header, and get 401.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode

from api.app import create_app
from tests.conftest import ADMIN_KEY, OrgFactory

Message = dict[str, Any]
Asgi = Callable[[dict[str, Any], Callable[[], Awaitable[Message]], Callable[..., Any]], Any]

# Refusals of requests that follow the document, by status, error code and a part of the
# message: each depends on the state, or on two values together, which a schema cannot say
# (it says it in words). Any other refusal of a valid request fails
# `positive_data_acceptance` (which already takes 401, 403, 404, 409 and 429).
_POSITIVE_REFUSALS = [
    # The reports' `to` after `from` and at most 366 days later; a dimension named twice.
    (400, "invalid_parameter", "must be after from"),
    (400, "invalid_parameter", "the range spans"),
    (400, "invalid_parameter", "named twice"),
    (400, "too_many_rows", ""),  # the store holds that many groups
    # The same for a reconciliation's window.
    (422, "invalid_request", "`to` must be after `from`"),
    (422, "invalid_request", "days at a time"),
    # A plan the catalogue does not have; a change the current subscription does not allow.
    (400, "unknown_plan", ""),
    (400, "invalid_change", ""),
    (402, "payment_required", ""),  # the org's trial ended
]
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def on_loop(app: Asgi, loop: asyncio.AbstractEventLoop) -> Asgi:
    """`app` callable from another thread's event loop: each request runs on `loop`."""

    async def bridged(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the services are the test's: nothing to start
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        request = [await receive()]
        while request[-1].get("more_body"):
            request.append(await receive())
        sent: list[Message] = []

        async def run() -> None:
            done = asyncio.Event()

            async def app_receive() -> Message:
                if request:
                    return request.pop(0)
                await done.wait()
                return {"type": "http.disconnect"}

            async def app_send(message: Message) -> None:
                sent.append(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    done.set()

            await app(scope, app_receive, app_send)

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))
        for message in sent:
            await send(message)

    return bridged


@pytest.mark.slow
# schemathesis draws from `random` inside its strategies, which Hypothesis flags.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_every_schemathesis_check_passes(stack, new_org: OrgFactory):
    app = create_app(stack.services)
    doc = app.openapi()
    schema = schemathesis.openapi.from_dict(doc)
    schema.app = on_loop(app, asyncio.get_running_loop())
    _, org_key = await new_org("free")
    target, _ = await new_org("enterprise")  # real path parameters point here half the time
    key_ids = [k.key_id for k in stack.services.registry.keys_of(target)]
    seen: dict[int, int] = {}
    failures: dict[tuple[str, str], str] = {}

    def fuzz(mode: GenerationMode, examples: int) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=schema.as_strategy(generation_mode=mode), real=st.booleans())
        def run(case: Any, real: bool) -> None:
            params = case.path_parameters or {}
            if real and "org_id" in params:
                params["org_id"] = target
                if "key_id" in params and key_ids:
                    params["key_id"] = key_ids[0]
            admin = case.path.startswith("/api/v2/admin")
            auth = {"Authorization": f"Bearer {ADMIN_KEY if admin else org_key}"}
            if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
                auth = {}  # the key is what schemathesis made wrong (or left out): send that
            response = case.call(headers=auth)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if mode is GenerationMode.POSITIVE and _expected_refusal(response):
                return
            try:
                case.validate_response(response, headers=auth)
            except FailureGroup as group:
                for failure in group.exceptions:
                    _note(failures, case, failure, str(group))
            except Failure as failure:
                _note(failures, case, failure, str(failure))

        run()

    await asyncio.to_thread(fuzz, GenerationMode.POSITIVE, 150)
    await asyncio.to_thread(fuzz, GenerationMode.NEGATIVE, 200)

    # unsupported_method and allow_header_conformance, for every path and undocumented method.
    async with _client(app) as client:
        templates = {
            path: re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path)) + "$")
            for path in doc["paths"]
        }
        for path in doc["paths"]:
            concrete = path.replace("{org_id}", target).replace("{key_id}", key_ids[0])
            concrete = concrete.replace("{run_id}", "r1").replace("{agent_id}", "a1")
            # Every documented path the request matches answers for it: `/sessions/quota`
            # (GET) is also `/sessions/{session_id}` (DELETE).
            documented = {
                m.upper()
                for other, pattern in templates.items()
                if pattern.match(concrete)
                for m in doc["paths"][other]
            }
            for method in METHODS:
                if method in documented or (method == "HEAD" and "GET" in documented):
                    continue
                r = await client.request(method, concrete, headers={"Authorization": "Bearer x"})
                allow = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
                if r.status_code != 405 or allow != documented:
                    failures[f"{method} {path}", "unsupported_method"] = (
                        f"{r.status_code}, Allow: {r.headers.get('allow')!r}; "
                        f"expected 405 with {sorted(documented)}"
                    )

    print("status codes seen:", dict(sorted(seen.items())))
    assert not failures, "\n\n".join(
        f"{op} [{check}]\n{text}" for (op, check), text in failures.items()
    )
    assert 500 not in seen
    # The run reached the handlers, not only the validation layer.
    assert seen.get(200, 0) > 20 and seen.get(422, 0) > 20, seen


def _expected_refusal(response: Any) -> bool:
    """A refusal of a valid request that only the state or two values together explain."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return any(
        (response.status_code, error["code"]) == (status, code) and part in error["message"]
        for status, code, part in _POSITIVE_REFUSALS
    )


def _note(failures: dict[tuple[str, str], str], case: Any, failure: Failure, report: str) -> None:
    key = (case.operation.label, type(failure).__name__)
    failures.setdefault(key, report[:3000])


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tally")
