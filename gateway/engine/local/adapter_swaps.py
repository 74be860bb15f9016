"""The local engine's adapters at run time: read and built on a worker thread, spliced in and out between two steps."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from gateway.engine.adapters import AdapterRegistry
from gateway.engine.local.adapter_splice import Splice, build, cut
from gateway.engine.local.adapter_weights import AdapterError, AdapterWeights, attach, detach, read_adapter, weights_file
from gateway.engine.local.errands import Errand
from gateway.engine.local.generation import Generation
from gateway.errors import ErrorCode, GatewayError

log = logging.getLogger("gateway.engine")


class LocalAdapters:
    """Loading reads the weights and builds the adapter's layers on a worker thread (never the event loop, never
    the model's owner), then the generation thread splices them in between two steps (engine/local/adapter_splice.py;
    an adapter that is no plain LoRA on linear layers is added there by peft instead). Unloading stops new turns on
    it at once and takes it out between the first two steps with none of its turns running or waiting. `max_bytes`
    bounds what adapters loaded at run time hold together, checked on the weights file's size before anything is read."""

    def __init__(self, generation: Generation, max_adapters: int, max_bytes: int) -> None:
        self.generation = generation
        self.registry = AdapterRegistry(max_adapters, generation.loaded.adapter_names)
        self.max_bytes = max_bytes
        self._held: dict[str, int] = {}  # bytes of the adapters loaded at run time (the worker's and the loop's)
        self._held_lock = threading.Lock()
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="gateway-adapters")
        self._loading = asyncio.Lock()  # one build at a time, each against the model its splice will find
        # The generation thread's: the model without adapters while a copy of its tree serves them, the layers
        # each spliced adapter is in, and a count of the changes peft's own path made to the module tree (a
        # splice built before one of them is not applied).
        self._bare: Any = None
        self._layers: dict[str, list[Any]] = {}
        self._shape = 0

    async def load(self, name: str, path: str) -> None:
        self.registry.claim(name)
        try:
            async with self._loading:
                built = await asyncio.get_running_loop().run_in_executor(self._reads, self._build, name, path)
                adapter = built[0]
                await self._between_steps(Errand(partial(self._attach, name, *built)))
        except AdapterError as exc:
            self._forget(name)
            raise GatewayError(ErrorCode.BAD_ADAPTER, str(exc), field="path") from None
        except BaseException:
            self._forget(name)
            raise
        self.registry.loaded(name)
        log.info("adapter %s loaded from %s (%d bytes)", name, path, adapter.nbytes)

    async def unload(self, name: str) -> None:
        self.registry.leave(name)
        try:
            await self._between_steps(Errand(partial(self._detach, name), lambda in_use: name not in in_use))
        finally:
            self._forget(name)
        log.info("adapter %s unloaded", name)

    def close(self) -> None:
        self._reads.shutdown(wait=False, cancel_futures=True)

    def _read(self, name: str, path: str) -> AdapterWeights:
        """On the worker thread (one, so loads take their bytes in turn): refuse what would pass the byte bound
        before reading it, hold its bytes, then read."""
        size = weights_file(path).stat().st_size
        with self._held_lock:
            held = sum(self._held.values())
            if held + size > self.max_bytes:
                message = f"the adapter's weights are {size} bytes; adapters may hold {self.max_bytes}, {held} are held"
                raise GatewayError(ErrorCode.TOO_LARGE, message, field="path")
            self._held[name] = size
        loaded = self.generation.loaded
        return read_adapter(path, loaded.device, loaded.dtype)

    def _build(self, name: str, path: str) -> tuple[AdapterWeights, Splice | None, int]:
        """On the worker thread: the weights, and the adapter's layers built against the model served now (None:
        for peft's path on the generation thread, which also says what is wrong with an adapter that does not fit)."""
        adapter = self._read(name, path)
        shape, model = self._shape, self.generation.loaded.model
        try:
            return adapter, build(model, name, adapter), shape
        except Exception:
            log.debug("adapter %s: built by peft on the generation thread instead", name, exc_info=True)
            return adapter, None, shape

    async def _between_steps(self, errand: Errand) -> None:
        self.generation.line.post(errand)
        await errand.done()

    def _forget(self, name: str) -> None:
        with self._held_lock:
            self._held.pop(name, None)
        self.registry.gone(name)

    def _attach(self, name: str, adapter: AdapterWeights, splice: Splice | None, shape: int) -> None:
        """Generation thread. Held vision-encoder outputs are not keyed by adapter, and one may adapt the vision
        tower: none are held from the first adapter on (as when adapters are loaded at start)."""
        loaded = self.generation.loaded
        if splice is not None and splice.base is loaded.model and shape == self._shape:
            if splice.model is not splice.base:
                self._bare = splice.base
            loaded.model = splice.apply()
            self._layers[name] = splice.layers
        else:
            loaded.model = attach(loaded.model, name, adapter)
            self._bare, self._shape = None, self._shape + 1
        loaded.adapter_names = (*loaded.adapter_names, name)
        self.generation.encoder_cache.clear()
        self.generation.encoder_cache.max_bytes = 0

    def _detach(self, name: str) -> None:
        """Generation thread: its held KV goes too (an adapter loaded later under the same name must not reuse it)."""
        loaded = self.generation.loaded
        loaded.adapter_names = tuple(n for n in loaded.adapter_names if n != name)
        if self._bare is not None and set(loaded.model.peft_config) == {name}:
            loaded.model, self._bare = self._bare, None
            self._layers.clear()
        elif name in self._layers:
            cut(loaded.model, name, self._layers.pop(name))
        else:
            loaded.model = detach(loaded.model, name)
            self._shape += 1
        self.generation.prefix_cache.drop_adapter(name)
