"""vLLM servers for the upstream tests: two replicas, started once for the module that uses them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import announce
from tests.vllm_support import VllmPair, free_port, start_pair, write_vision_model


@pytest.fixture(scope="module")  # stopped as soon as the module that uses them is done
def vllm_pair(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[VllmPair]:
    root = tmp_path_factory.mktemp("vllm")
    model_dir = write_vision_model(root / "model")
    pair = start_pair(model_dir, (free_port(), free_port()), root, say=lambda line: announce(pytestconfig, line))
    yield pair
    pair.primary.kill()
    pair.secondary.kill()
