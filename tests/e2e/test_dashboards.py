"""docs/grafana-dashboard.json and docs/prometheus-alerts.yml name only what a real server's /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.client import GatewayClient
from tests.conftest import RunningServer

DOCS = Path(__file__).resolve().parents[2] / "docs"
# PromQL words that are not metric names: functions are followed by "(", these are not always.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: identifiers left once strings, label matchers, ranges,
    grouping clauses, function calls and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text))
    return {n for n in names if n.lower() not in KEYWORDS and not re.fullmatch(r"\d+[smhdwy]?", n)}


def label_names(expr: str) -> set[str]:
    """Labels the expression matches on or groups by."""
    matchers = re.findall(r"\{([^}]*)\}", expr)
    labels = {m for group in matchers for m in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", group)}
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels.update(name.strip() for name in group.split(",") if name.strip())
    return labels


async def exported(server: RunningServer) -> tuple[set[str], set[str]]:
    """The sample names (with each type's suffixes) and label names a real server exports after a turn."""
    async with GatewayClient(server.ws_url) as client:
        result = await client.turn("t1", "hello", max_tokens=4, temperature=0)
    assert result.done is not None
    body = requests.get(f"{server.http_url}/metrics", timeout=10).text
    names, labels = set(), {"le"}
    for family in text_string_to_metric_families(body):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        labels.update(label for sample in family.samples for label in sample.labels)
    return names, labels | {"code", "reason"}  # labelled by errors and refusals, which this turn had none of


def test_the_expression_parser_finds_metrics_not_functions_or_labels() -> None:
    """The check below is only as good as the extraction: functions, labels, ranges and keywords are left out."""
    expr = 'histogram_quantile(0.9, sum by (le) (rate(a_bucket{code=~"x|y"}[5m]))) / clamp_min(b_total offset 1h, 1) > 0.5'
    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert label_names(expr) == {"code", "le"}


async def test_every_dashboard_and_alert_expression_names_exported_metrics(server: RunningServer) -> None:
    """Every panel and alert selects metrics (and labels) that /metrics really serves, and each uses at least one."""
    names, labels = await exported(server)
    expressions = dashboard_expressions() + alert_expressions()
    assert len(expressions) >= 20
    for expr in expressions:
        used = metric_names(expr)
        assert used and used <= names, f"{expr}: {sorted(used - names)} not exported"
        assert label_names(expr) <= labels, f"{expr}: labels {sorted(label_names(expr) - labels)} not exported"


async def test_the_new_gauges_and_counters_follow_the_server(server: RunningServer) -> None:
    """After a turn: its prompt tokens are counted, its session is in memory, the store is healthy, the image limit is set."""
    await exported(server)
    body = requests.get(f"{server.http_url}/metrics", timeout=10).text
    values = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples if not s.labels}
    assert values["gateway_prompt_tokens_total"] > 0 and values["gateway_turn_duration_seconds_count"] >= 1
    assert values["gateway_sessions"] >= 1 and values["gateway_store_healthy"] == 1 and values["gateway_turns_in_flight"] == 0
    assert 0 < values["gateway_session_image_bytes_limit"] <= server.settings.max_total_image_bytes


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    """Turns, tokens, TTFT, inter-token latency, queue, sessions, errors, the store, images, caches, live frames: each a panel."""
    used = {name for expr in dashboard_expressions() for name in metric_names(expr)}
    wanted = {
        "gateway_turns_total",
        "gateway_tokens_generated_total",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_inter_token_seconds_bucket",
        "gateway_turns_queued",
        "gateway_sessions",
        "gateway_errors_total",
        "gateway_store_failures_total",
        "gateway_session_image_bytes",
        "gateway_kv_cache_hit_rate",
        "gateway_prompt_tokens_cached_total",
        "gateway_live_frames_accepted_total",
        "gateway_live_frames_dropped_total",
    }
    assert wanted <= used, sorted(wanted - used)


def test_alert_rules_and_panels_are_well_formed() -> None:
    """Each alert has a name, a duration, a severity and a summary; panels have unique ids and fit the 24-column grid;
    every expression's brackets balance."""
    rules = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        assert rule["alert"].startswith("Gateway") and re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["labels"]["severity"] in {"warning", "critical"} and rule["annotations"]["summary"]
    panels = json.loads((DOCS / "grafana-dashboard.json").read_text())["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert all(panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24 for panel in panels)
    for expr in dashboard_expressions() + alert_expressions():
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), expr
