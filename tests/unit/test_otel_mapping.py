"""The GenAI span mapping (tally.domain.otel): pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.events import validate_event
from tally.domain.otel import Outcome, Span, event_id, map_spans

TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
END_NS = 1_796_000_000_123_456_789
RESOURCE = {"service.name": "support-app"}


def span(n: int, parent: int = 0, error: bool = False, resource=None, **attributes) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=n.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        end_ns=END_NS,
        error=error,
        # A keyword set to None leaves the attribute out.
        attributes={k.replace("__", "."): v for k, v in attributes.items() if v is not None},
        resource=RESOURCE if resource is None else resource,
    )


def agent(n: int = 1, **attributes) -> Span:
    return span(n, gen_ai__operation__name="invoke_agent", **attributes)


def chat(n: int, parent: int = 1, **attributes) -> Span:
    base = {
        "gen_ai__operation__name": "chat",
        "gen_ai__request__model": "gpt-4o",
        "gen_ai__usage__input_tokens": 100,
        "gen_ai__usage__output_tokens": 20,
    }
    return span(n, parent, **{**base, **attributes})


def tool(n: int, parent: int = 1, error: bool = False, **attributes) -> Span:
    base = {"gen_ai__operation__name": "execute_tool", "gen_ai__tool__name": "web_search"}
    return span(n, parent, error=error, **{**base, **attributes})


def one(*spans: Span, index: int = -1) -> Outcome:
    return map_spans(spans, "acme", "live")[index]


def test_an_agent_run_becomes_two_llm_events_and_two_tool_calls():
    spans = [
        agent(gen_ai__agent__id="support-bot", gen_ai__conversation__id="conv-7"),
        chat(
            2,
            gen_ai__response__model="gpt-4o-2024-08-06",
            gen_ai__usage__cache_read__input_tokens=40,
        ),
        chat(3, gen_ai__operation__name="embeddings", gen_ai__usage__output_tokens=None),
        tool(4),
        tool(5, error=True, tally__connector="github", gen_ai__tool__name="create_issue"),
        span(6, 1, http__method="GET"),  # an HTTP client span: no usage
    ]
    out = map_spans(spans, "acme", "live")
    assert [o.kind for o in out] == ["ignored", "event", "event", "event", "event", "ignored"]
    ts = datetime(2026, 11, 30, 0, 53, 20, 123456, tzinfo=UTC)  # date -u -d @1796000000
    common = {
        "org_id": "acme",
        "key_mode": "live",
        "agent_id": "support-bot",
        "run_id": TRACE.hex(),
        "session_id": "conv-7",
        "ts": ts,
    }
    assert out[1].event == {
        **common,
        "event_id": f"otel-{TRACE.hex()}-0000000000000002",
        "type": "llm.usage",
        "model": "gpt-4o-2024-08-06",  # the response model wins over the request model
        "input_tokens": 100,
        "output_tokens": 20,
        "cached_input_tokens": 40,
    }
    assert out[2].event is not None and out[2].event["output_tokens"] == 0
    assert out[3].event == {
        **common,
        "event_id": event_id(TRACE, (4).to_bytes(8, "big")),
        "type": "tool.call",
        "tool": "web_search",
        "connector": "web_search",  # no tally.connector: the tool is its own connector
        "success": True,
    }
    assert out[4].event is not None
    assert (out[4].event["connector"], out[4].event["tool"], out[4].event["success"]) == (
        "github",
        "create_issue",
        False,
    )
    for o in out[1:5]:  # every event passes the wire contract
        assert o.event is not None
        validate_event(o.event)


def test_the_agent_comes_from_the_span_the_nearest_invoke_agent_the_resource_or_the_service():
    assert one(chat(2, gen_ai__agent__name="Math Tutor")).event["agent_id"] == "Math_Tutor"
    outer = agent(1, gen_ai__agent__name="planner")
    inner = span(2, 1, gen_ai__operation__name="invoke_agent", gen_ai__agent__id="coder")
    assert one(outer, inner, chat(3, parent=2)).event["agent_id"] == "coder"
    assert one(outer, span(2, 1), chat(3, parent=2)).event["agent_id"] == "planner"
    # Its parent was exported in another request: the resource decides.
    assert one(outer, chat(3, parent=2)).event["agent_id"] == "support-app"
    on_resource = {"service.name": "svc", "gen_ai.agent.name": "triage"}
    assert one(chat(2, resource=on_resource)).event["agent_id"] == "triage"
    assert one(chat(2)).event["agent_id"] == "support-app"
    assert one(chat(2, resource={})).event["agent_id"] == "unknown_service"


def test_the_run_is_the_trace_or_tally_run_id():
    assert one(chat(2)).event["run_id"] == TRACE.hex()
    assert one(chat(2, tally__run__id="run-42")).event["run_id"] == "run-42"
    resource = {**RESOURCE, "tally.run.id": "batch-9"}
    assert one(chat(2, resource=resource)).event["run_id"] == "batch-9"


def test_spans_without_usage_are_ignored_never_refused():
    assert (
        one(chat(2, gen_ai__usage__input_tokens=None, gen_ai__usage__output_tokens=None)).kind
        == "ignored"
    )
    assert one(agent(gen_ai__usage__input_tokens=5000)).kind == "ignored"  # sums its children
    assert one(span(2, gen_ai__operation__name="create_agent")).kind == "ignored"
    assert one(span(2)).kind == "ignored"


def test_deprecated_token_names_are_read_when_the_current_ones_are_absent():
    old = chat(
        2,
        gen_ai__usage__input_tokens=None,
        gen_ai__usage__output_tokens=None,
        gen_ai__usage__prompt_tokens=7,
        gen_ai__usage__completion_tokens=3,
    )
    event = one(old).event
    assert (event["input_tokens"], event["output_tokens"]) == (7, 3)


def test_refusals_name_the_span_and_the_rule():
    cases = [
        (
            chat(2, gen_ai__request__model=None),
            "gen_ai.response.model and gen_ai.request.model are both missing",
        ),
        (
            chat(2, gen_ai__usage__input_tokens="12"),
            "gen_ai.usage.input_tokens must be an integer, not '12'",
        ),
        (chat(2, gen_ai__usage__output_tokens=-1), "gen_ai.usage.output_tokens must be between 0"),
        (
            chat(2, gen_ai__usage__cache_read__input_tokens=101),
            "gen_ai.usage.cache_read.input_tokens (101) exceeds gen_ai.usage.input_tokens (100)",
        ),
        (tool(2, gen_ai__tool__name=None), "gen_ai.tool.name is missing"),
        (chat(2, gen_ai__conversation__id="c" * 129), "gen_ai.conversation.id is over 128"),
    ]
    for s, reason in cases:
        out = one(s)
        assert out.kind == "rejected", reason
        assert out.reason is not None
        assert out.reason.startswith(f"span otel-{TRACE.hex()}-0000000000000002: {reason}")
    no_end = Span(TRACE, (2).to_bytes(8, "big"), b"", 0, False, chat(2).attributes, RESOURCE)
    assert "end_time_unix_nano is missing" in (one(no_end).reason or "")


def test_a_whole_number_sent_as_a_double_is_a_count():
    assert one(chat(2, gen_ai__usage__input_tokens=64.0)).event["input_tokens"] == 64


def test_the_provider_of_a_model_call_is_kept():
    assert one(chat(2, gen_ai__provider__name="openai")).event["provider"] == "openai"
    assert one(chat(2, gen_ai__system="anthropic")).event["provider"] == "anthropic"  # deprecated
    assert "provider" not in one(chat(2)).event
    assert "provider" not in one(tool(2, gen_ai__provider__name="openai")).event
