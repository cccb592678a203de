"""The production topology as files: docker-compose.yml, Dockerfile and .dockerignore.

`docker compose config` needs Docker; these tests parse the files instead and check what
`docker compose up` relies on: the services and their order, health checks, named volumes,
the topics, and that every Tally process gets valid settings and a real `tally` command.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from commands.cli import cli
from schemas.marks import STORED_TOPIC
from tally.config import ALERTS_TOPIC, COUNTERS_TOPIC, DLQ_TOPIC, EVENTS_TOPIC, Settings
from tally.store import redact

ROOT = Path(__file__).resolve().parents[2]
ENV = {"TALLY_ADMIN_KEY": "a-long-enough-admin-key"}
_VAR = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: `${V}`, `${V:-default}`, `${V:?error}`, `$$`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == "-" else ""

    parts = value.split("$$")
    return "$".join(_VAR.sub(sub, p) for p in parts)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return interpolate(compose["services"], ENV)


def tally_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service["environment"].items() if k.startswith("TALLY_")}


def test_the_topology_has_every_part(services: dict[str, Any]):
    assert set(services) == {
        "kafka",
        "kafka-init",
        "clickhouse",
        "migrate",
        "worker",
        "api",
        "api-2",
    }
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka-init"]["image"] == services["kafka"]["image"]
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in ("migrate", "worker", "api", "api-2"):
        assert services[name]["build"] == "." and services[name]["image"] == "tally:latest"


def test_the_variable_substitution_of_this_test_is_compose_s():
    env = {"SET": "x"}
    assert interpolate("a${SET}b${UNSET:-d}c$${KEEP}", env) == "axbdc${KEEP}"
    with pytest.raises(KeyError, match="needed"):
        interpolate("${UNSET:?needed}", env)


def test_compose_refuses_to_start_without_an_admin_key(compose: dict[str, Any]):
    with pytest.raises(KeyError, match="TALLY_ADMIN_KEY"):
        interpolate(compose["services"], {})


def test_kafka_runs_in_kraft_mode_on_its_named_volume(compose: dict[str, Any], services):
    env = services["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])  # a base64 UUID
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    advertised = {item.split("://")[0] for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert listeners <= set(protocols) and advertised <= listeners
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners - advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    volume, path = services["kafka"]["volumes"][0].split(":")
    assert volume in compose["volumes"] and env["KAFKA_LOG_DIRS"] == path
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"


def topic_commands(services: dict[str, Any]) -> dict[str, list[str]]:
    """Each `--create` line of kafka-init's script, as its arguments, by topic."""
    script = services["kafka-init"]["command"][0].replace("\\\n", " ")
    partitions = str(services["kafka-init"]["environment"]["PARTITIONS"])
    out = {}
    for line in script.splitlines():
        words = shlex.split(line.replace('"$PARTITIONS"', partitions))
        if "--create" in words:
            out[words[words.index("--topic") + 1]] = words
    return out


def test_kafka_init_creates_the_topics_with_their_partitions_and_policies(services):
    init = services["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init["entrypoint"][0] == "/bin/sh" and init["command"][0].startswith("set -eu")
    topics = topic_commands(services)
    assert set(topics) == {EVENTS_TOPIC, DLQ_TOPIC, COUNTERS_TOPIC, STORED_TOPIC, ALERTS_TOPIC}

    def option(words: list[str], name: str) -> list[str]:
        return [words[i + 1] for i, w in enumerate(words) if w == name]

    workers = tally_env(services["worker"])
    for words in topics.values():
        assert "--if-not-exists" in words and option(words, "--bootstrap-server") == []
        assert option(words, "--replication-factor") == ["1"]
    events_partitions = int(option(topics[EVENTS_TOPIC], "--partitions")[0])
    # Enough partitions for many workers, and what the Tally processes expect.
    assert events_partitions >= 8 and events_partitions == int(workers["TALLY_PARTITIONS"])
    assert events_partitions % services["worker"]["deploy"]["replicas"] == 0
    assert option(topics[COUNTERS_TOPIC], "--partitions") == [str(events_partitions)]
    # Alerts are keyed by org; API replicas share the orgs by its partitions.
    assert option(topics[ALERTS_TOPIC], "--partitions") == [str(events_partitions)]
    assert option(topics[DLQ_TOPIC], "--partitions") == ["1"]
    assert option(topics[STORED_TOPIC], "--partitions") == ["1"]  # marks: one ordered stream
    assert "cleanup.policy=compact" in option(topics[COUNTERS_TOPIC], "--config")
    assert all("cleanup.policy" not in c for c in option(topics[EVENTS_TOPIC], "--config"))
    assert "--bootstrap-server kafka:9092" in services["kafka-init"]["command"][0]


def test_clickhouse_keeps_its_data_on_a_named_volume(compose: dict[str, Any], services):
    ch = services["clickhouse"]
    mounts = dict(v.split(":") for v in ch["volumes"])
    assert {"clickhouse-data", "clickhouse-logs"} <= set(mounts)
    assert mounts["clickhouse-data"] == "/var/lib/clickhouse"
    assert set(compose["volumes"]) == {"kafka-data", "clickhouse-data", "clickhouse-logs"}
    for service in services.values():
        for mount in service.get("volumes", []):
            assert mount.split(":")[0] in compose["volumes"], mount  # named, never a host path


def test_health_checks_gate_the_start_up_order(services: dict[str, Any]):
    for name in ("kafka", "clickhouse", "api", "api-2"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in {"CMD", "CMD-SHELL"} and check["retries"] >= 10
    assert "kafka-broker-api-versions.sh" in services["kafka"]["healthcheck"]["test"][1]
    assert "SELECT 1" in services["clickhouse"]["healthcheck"]["test"][1]
    for name in ("api", "api-2"):
        api_port = services[name]["environment"]["TALLY_API_PORT"]
        assert f"127.0.0.1:{api_port}/readyz" in services[name]["healthcheck"]["test"][-1]
    assert services["migrate"]["depends_on"] == {"clickhouse": {"condition": "service_healthy"}}
    done = {"condition": "service_completed_successfully"}
    for name in ("worker", "api", "api-2"):
        assert services[name]["depends_on"] == {"kafka-init": done, "migrate": done}
    for name in ("kafka-init", "migrate"):
        assert services[name]["restart"] == "no"
    # A worker drains its batch in flight (up to 30 s) on SIGTERM: give it the time.
    assert services["worker"]["stop_grace_period"] == "45s"


def test_every_tally_process_gets_valid_settings_and_a_real_command(services):
    commands = {c.name for c in typer.main.get_command(cli).commands.values()}  # type: ignore[attr-defined]
    ch = services["clickhouse"]["environment"]
    for name in ("migrate", "worker", "api", "api-2"):
        env = tally_env(services[name])
        fields = {f"TALLY_{f.upper()}" for f in Settings.model_fields}
        assert set(env) <= fields, set(env) - fields  # no misspelt variable is ignored
        settings = Settings(**{k.removeprefix("TALLY_").lower(): v for k, v in env.items()})
        assert settings.bootstrap_servers == "kafka:9092"
        assert settings.clickhouse_url == (
            f"http://{ch['CLICKHOUSE_USER']}:{ch['CLICKHOUSE_PASSWORD']}@clickhouse:8123/"
            f"{ch['CLICKHOUSE_DB']}"
        )
        assert services[name]["command"][0] in commands
    api = Settings(api_host=services["api"]["environment"]["TALLY_API_HOST"])
    assert api.api_host == "0.0.0.0"


def test_two_api_replicas_share_one_store_and_each_has_its_own_host_port(services):
    """Replicas share the store and merge each other's admin writes; each container gets a
    host port of its own (one host port is bound by one container)."""
    a, b = services["api"], services["api-2"]
    assert tally_env(a) == tally_env(b)
    assert a["command"] == b["command"] == ["api"]
    assert float(tally_env(a)["TALLY_REGISTRY_REFRESH_S"]) == Settings().registry_refresh_s
    assert a["ports"] == ["8080:8080"]
    assert b["ports"] == ["127.0.0.1:8081:8080"]
    assert "deploy" not in a and "deploy" not in b  # one container each


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_runs_the_tally_command_as_an_unprivileged_user():
    instructions = dockerfile()
    kinds = [k for k, _ in instructions]
    assert instructions[0][0] == "FROM" and re.match(r"python:3\.1[1-9]", instructions[0][1])
    entrypoint = json.loads(dict(instructions)["ENTRYPOINT"])
    assert entrypoint == ["tally"] and json.loads(dict(instructions)["CMD"]) == ["api"]
    copied = {args.split()[0] for kind, args in instructions if kind == "COPY"}
    packages = {"schemas", "producers", "streams", "api", "tally", "commands"}
    assert {"pyproject.toml", *packages} <= copied
    runs = " ".join(args for kind, args in instructions if kind == "RUN")
    assert "pip install --no-deps ." in runs and "useradd" in runs
    user = dict(instructions)["USER"]
    assert user not in {"root", "0"} and kinds.index("USER") > kinds.index("RUN")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".tally-data"} <= set(ignored)


def test_store_urls_are_logged_without_their_password():
    assert redact("http://tally:s3cret@clickhouse:8123/tally") == (
        "http://tally:***@clickhouse:8123/tally"
    )
    assert redact("https://ch.example:8443/db") == "https://ch.example:8443/db"
    assert (
        redact("chdb:///var/lib/tally/chdb?database=x") == "chdb:///var/lib/tally/chdb?database=x"
    )
