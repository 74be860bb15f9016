"""Adapters at run time behind upstreams: forwarded to vLLM's own load and unload endpoints, on every replica."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from gateway.engine.adapters import AdapterRegistry
from gateway.engine.upstream.client import Rejected, ReplicaClient, UpstreamError
from gateway.engine.upstream.replicas import Replica
from gateway.engine.upstream.turn import UpstreamTurn
from gateway.errors import ErrorCode, GatewayError, RetryLater

log = logging.getLogger("gateway.upstream")

RUNTIME_LORA = "vLLM loads adapters at run time when started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"


class UpstreamAdapters:
    """A load goes to every replica (a turn may land on any), and is undone on those that took it when one
    refuses; an unload stops new turns at once, waits for the turns running on the adapter, then goes to every
    replica. A replica's refusal is `bad_adapter` with its message; one that cannot answer, `overloaded`."""

    def __init__(
        self,
        registry: AdapterRegistry,
        replicas: Callable[[], list[Replica]],
        client_for: Callable[[Replica], ReplicaClient],
        turns: Callable[[], Iterable[UpstreamTurn]],
    ) -> None:
        self.registry = registry
        self._replicas = replicas
        self._client_for = client_for
        self._turns = turns

    async def load(self, name: str, path: str) -> None:
        self.registry.claim(name)
        took: list[Replica] = []
        try:
            for replica in self._replicas():
                await self._client_for(replica).post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
                took.append(replica)
        except UpstreamError as exc:
            await self._unload_from(took, name)
            raise _refusal(exc) from None
        finally:
            if len(took) < len(self._replicas()):
                self.registry.failed(name)
        self.registry.loaded(name)
        log.info("adapter %s loaded on %d upstream replicas from %s", name, len(took), path)

    async def unload(self, name: str) -> None:
        self.registry.leave(name)
        try:
            running = {turn.task for turn in self._turns() if turn.request.adapter == name and turn.task is not None}
            if running:
                await asyncio.wait(running)
            await self._unload_from(self._replicas(), name)
        finally:
            self.registry.gone(name)
        log.info("adapter %s unloaded from the upstream replicas", name)

    async def _unload_from(self, replicas: list[Replica], name: str) -> None:
        """Best effort: the gateway serves the adapter no more either way; a replica that kept it is logged."""
        for replica in replicas:
            try:
                await self._client_for(replica).post("/v1/unload_lora_adapter", {"lora_name": name})
            except UpstreamError as exc:
                log.warning("upstream %s did not unload adapter %s: %s", replica.url, name, exc)


def _refusal(exc: UpstreamError) -> GatewayError:
    if isinstance(exc, Rejected):
        hint = f" ({RUNTIME_LORA})" if exc.status in (404, 405) else ""
        return GatewayError(ErrorCode.BAD_ADAPTER, f"{str(exc)[:300]}{hint}", field="path")
    return RetryLater(ErrorCode.OVERLOADED, f"the upstream could not load the adapter: {str(exc)[:200]}", 1000)
