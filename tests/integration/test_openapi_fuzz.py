"""schemathesis over the OpenAPI document: no 500, no answer outside the documented schema.

Cases are generated from the document served by the app, in-process: Hypothesis runs in a
worker thread and every request goes through the ASGI app on the test event loop, so the
real broker, counter table and chDB store answer it. Bounded: 230 cases, a few seconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from tests.conftest import ADMIN_KEY, OrgFactory

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
BASE = "http://tally"


@pytest.mark.slow
# schemathesis draws from `random` inside its strategies, which Hypothesis flags.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_no_server_error_and_no_schema_violation(stack, new_org: OrgFactory):
    app = create_app(stack.services)
    schema = schemathesis.openapi.from_dict(app.openapi())
    _, org_key = await new_org("free")
    target, _ = await new_org("enterprise")  # real path parameters point here half the time
    key_ids = [k.key_id for k in stack.services.registry.keys_of(target)]
    loop = asyncio.get_running_loop()
    seen: dict[int, int] = {}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:

        def send(case: Any) -> httpx.Response:
            admin = case.path.startswith("/api/v2/admin")
            auth = {"Authorization": f"Bearer {ADMIN_KEY if admin else org_key}"}
            kw = case.as_transport_kwargs(base_url=BASE, headers=auth)
            request: dict[str, Any] = {
                "method": kw["method"],
                "url": kw["url"],
                "headers": kw.get("headers"),
                "params": kw.get("params"),
            }
            if "json" in kw:
                request["json"] = kw["json"]
            elif kw.get("data") is not None:
                request["content"] = kw["data"]
            future = asyncio.run_coroutine_threadsafe(client.request(**request), loop)
            return future.result(timeout=30)

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
                response = send(case)
                seen[response.status_code] = seen.get(response.status_code, 0) + 1
                case.validate_response(response, checks=CHECKS)

            run()

        await asyncio.to_thread(fuzz, GenerationMode.POSITIVE, 150)
        await asyncio.to_thread(fuzz, GenerationMode.NEGATIVE, 80)

    print("status codes seen:", dict(sorted(seen.items())))
    assert 500 not in seen
    # The run reached the handlers, not only the validation layer.
    assert seen.get(200, 0) > 20 and seen.get(422, 0) > 20, seen
