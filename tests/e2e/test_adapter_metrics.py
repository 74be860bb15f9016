"""Adapters on /metrics: loads and unloads counted by result, load time observed, adapters served, turns per adapter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e.test_adapters import ADMIN, AS_USER, KEY, completion, load, unload


@pytest.fixture(scope="module")
def counted(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(api_key=KEY, admin_key=ADMIN, max_adapters=2, turns_per_minute=1e6))
    yield running
    running.stop()


def adapter_samples(server: RunningServer) -> dict[str, float]:
    """Every adapter sample /metrics serves now, named with its labels' values (`loads:ok`, `turns:tuned`, ...)."""
    body = requests.get(f"{server.http_url}/metrics", headers=AS_USER, timeout=10).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name.startswith(("gateway_adapter", "gateway_adapters")) and not sample.name.endswith("_created"):
                short = sample.name.removeprefix("gateway_adapter_").removesuffix("_total")
                labels = [value for key, value in sample.labels.items() if key != "le"]
                if "le" not in sample.labels:
                    samples[":".join([short, *labels])] = sample.value
    return samples


def test_loads_unloads_and_turns_on_adapters_are_counted(counted: RunningServer, demo_dirs: DemoDirs) -> None:
    """A load, a refused load, two turns on the adapter and an unload: each counted once by result; the adapter is
    served (gauge 1) until the unload, and its turns' series goes with it."""
    nothing = {"gateway_adapters_loaded": 0, "loads:ok": 0, "unloads:ok": 0, "load_seconds_count": 0, "load_seconds_sum": 0}
    assert adapter_samples(counted) == nothing
    assert load(counted, "tuned", demo_dirs.adapter).status_code == 201
    assert load(counted, "broken", demo_dirs.model).status_code == 400
    for _ in range(2):
        assert completion(counted, "tuned", max_tokens=4).status_code == 200
    assert completion(counted, "gateway-demo", max_tokens=4).status_code == 200
    counts = adapter_samples(counted)
    assert counts.pop("load_seconds_sum") > 0
    assert counts == {
        "gateway_adapters_loaded": 1,
        "loads:ok": 1,
        "loads:bad_adapter": 1,
        "unloads:ok": 0,
        "load_seconds_count": 1,
        "turns:tuned": 2,
    }
    assert unload(counted, "tuned").status_code == 200
    assert unload(counted, "tuned").status_code == 404
    counts = adapter_samples(counted)
    counts.pop("load_seconds_sum")
    assert counts == {
        "gateway_adapters_loaded": 0,
        "loads:ok": 1,
        "loads:bad_adapter": 1,
        "unloads:ok": 1,
        "unloads:not_found": 1,
        "load_seconds_count": 1,
    }
