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
    replica. A replica's refusal is `bad_adapter` with its message; one that cannot answer, `overloaded`.
    vLLM holds adapters loaded at run time in memory only: a replica that restarts has lost them, and `restore`
    (from the health check) loads them on it again, the replica taking no turn on one until it has it."""

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
        self.paths: dict[str, str] = {}  # the adapters loaded at run time: name -> path, to load again after a restart

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
        self.paths[name] = path
        log.info("adapter %s loaded on %d upstream replicas from %s", name, len(took), path)

    async def unload(self, name: str) -> None:
        self.registry.leave(name)
        self.paths.pop(name, None)
        try:
            running = {turn.task for turn in self._turns() if turn.request.adapter == name and turn.task is not None}
            if running:
                await asyncio.wait(running)
            await self._unload_from(self._replicas(), name)
        finally:
            self.registry.gone(name)
            for replica in self._replicas():
                replica.lacking.discard(name)
        log.info("adapter %s unloaded from the upstream replicas", name)

    async def restore(self, replica: Replica) -> None:
        """Load on `replica` again each adapter loaded at run time that it no longer lists (it restarted); it is
        marked lacking each one until then, so turns on it go to the other replicas (or wait) meanwhile."""
        if not self.paths:
            return
        client = self._client_for(replica)
        try:
            listed = await client.model_ids()
        except UpstreamError:
            return  # the health check's next round asks again
        replica.lacking |= {name for name in self.paths if name not in listed}
        for name in sorted(replica.lacking):
            path = self.paths.get(name)
            if path is None:  # unloaded meanwhile
                replica.lacking.discard(name)
                continue
            try:
                await client.post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
            except UpstreamError as exc:
                log.warning("upstream %s did not load adapter %s again: %s", replica.url, name, exc)
                continue
            replica.lacking.discard(name)
            log.warning("upstream %s had lost adapter %s (a restart): loaded it again", replica.url, name)
            if name not in self.paths:  # unloaded while it loaded: the replica must not keep it
                await self._unload_from([replica], name)

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
