"""The shared store: Redis or Valkey, so that several gateway processes serve the same sessions."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from gateway.config import Settings
from gateway.core.conversation_record import ConversationRecord, assemble
from gateway.core.exchange import PendingTurn
from gateway.core.session import Exchange
from gateway.core.store import base
from gateway.core.store.tree_sync import TreeChange

PREFIX = "gateway:"
USED = PREFIX + "used"  # sorted set: session id -> last use (unix seconds)
SIZES = PREFIX + "bytes"  # hash: session id -> bytes its history holds
TOTAL = PREFIX + "total"  # the sum of SIZES, kept as each size changes so a write need not add them up

# Set one session's size and adjust the total by the difference, atomically; the new total.
RESIZE = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[2])
if new > 0 then redis.call('HSET', KEYS[1], ARGV[1], new) else redis.call('HDEL', KEYS[1], ARGV[1]) end
return redis.call('INCRBY', KEYS[2], new - old)
"""


def _claim(key: str) -> str:
    return f"{PREFIX}claim:{key}"


def _meta(session_id: str) -> str:
    return f"{PREFIX}session:{session_id}"


def _history(session_id: str) -> str:
    return f"{PREFIX}history:{session_id}"  # a flat history, as sessions were stored before the tree


def _tree(session_id: str) -> tuple[str, str, str]:
    """The keys of a session's tree: its head (a string), its items by id and its pictures by sha256 (hashes)."""
    return f"{PREFIX}tree:{session_id}", f"{PREFIX}items:{session_id}", f"{PREFIX}pictures:{session_id}"


class RedisStore:
    """A session is a hash of its settings and its tree (a head, a hash of its items, a hash of its pictures);
    keys expire with the TTL, and a sorted set by last use lets a write past the size limit evict the least
    recently used."""

    persistent = True

    def __init__(self, url: str, settings: Settings) -> None:
        self.ttl_s = int(settings.session_ttl_s)
        self.max_bytes = settings.max_store_bytes
        timeout = settings.store_timeout_s  # a hung server fails the call instead of holding it forever
        self.redis: Any = aioredis.from_url(url, decode_responses=False, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._resize = self.redis.register_script(RESIZE)

    async def open(self) -> None:
        await self.redis.ping()

    async def load_meta(self, session_id: str) -> base.SessionMeta | None:
        token_hash, owner, updated_at = await self.redis.hmget(_meta(session_id), ["token_hash", "owner", "updated_at"])
        if token_hash is None or owner is None or updated_at is None:
            return None
        return base.SessionMeta(session_id, token_hash.decode(), owner.decode(), float(updated_at))

    async def load(self, session_id: str) -> base.SessionRecord | None:
        meta = await self.redis.hgetall(_meta(session_id))
        if not meta:
            return None
        tree = await self._load_tree(session_id)
        history = await self.redis.hgetall(_history(session_id)) if tree is None else {}
        system = meta.get(b"system")
        fields = (meta[b"token_hash"].decode(), meta[b"owner"].decode(), system.decode() if system else None, meta[b"defaults"])
        stored = (*fields, meta.get(b"pending"), int(meta[b"last_seq"]), float(meta[b"updated_at"]))
        return base.decode_record(session_id, stored, ((int(n), blob) for n, blob in history.items()), tree)

    async def _load_tree(self, session_id: str) -> ConversationRecord | None:
        head, items, pictures = _tree(session_id)
        top = await self.redis.get(head)
        if top is None:
            return None
        by_id = {key.decode(): blob for key, blob in (await self.redis.hgetall(items)).items()}
        by_sha = {key.decode(): blob for key, blob in (await self.redis.hgetall(pictures)).items()}
        return assemble(top, by_id, by_sha)

    async def save_meta(self, record: base.SessionRecord) -> None:
        fields = {
            "token_hash": record.token_hash,
            "owner": record.owner,
            "system": record.system or "",
            "defaults": base.encode_options(record.defaults),
            "last_seq": record.last_seq,
            "updated_at": repr(record.updated_at),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(_meta(record.id), mapping=fields)
            pipe.expire(_meta(record.id), self.ttl_s)
            for key in (_history(record.id), *_tree(record.id)):
                pipe.expire(key, self.ttl_s)
            pipe.zadd(USED, {record.id: record.updated_at})
            await pipe.execute()

    async def sync_history(self, session_id: str, exchanges: list[Exchange]) -> None:
        stored = sorted(int(n) for n in await self.redis.hkeys(_history(session_id)))
        first = exchanges[0].number if exchanges else None
        gone = [n for n in stored if first is None or n < first]
        newest = stored[-1] if stored else None
        new = {str(number): blob for number, blob in base.exchanges_to_write(exchanges, newest)}
        async with self.redis.pipeline(transaction=True) as pipe:
            if gone:
                pipe.hdel(_history(session_id), *(str(n) for n in gone))
            if new:
                pipe.hset(_history(session_id), mapping=new)
                pipe.expire(_history(session_id), self.ttl_s)
            await pipe.execute()
        await self._account(session_id, sum(base.exchange_bytes(e) for e in exchanges))

    async def sync_tree(self, session_id: str, change: TreeChange) -> None:
        head, items, pictures = _tree(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            if change.full:
                pipe.delete(items, pictures, _history(session_id))
            for key, gone in ((items, change.gone_items), (pictures, change.gone_pictures)):
                if gone:
                    pipe.hdel(key, *gone)
            for key, written in ((items, change.items), (pictures, change.pictures)):
                if written:
                    pipe.hset(key, mapping=written)
            pipe.set(head, change.head, ex=self.ttl_s)
            pipe.expire(items, self.ttl_s)
            pipe.expire(pictures, self.ttl_s)
            await pipe.execute()
        await self._account(session_id, change.bytes)

    async def _account(self, session_id: str, nbytes: int) -> None:
        """The session's history now holds `nbytes`; past the size limit, the least recently used others go."""
        total = await self._resize(keys=[SIZES, TOTAL], args=[session_id, nbytes])
        if int(total) > self.max_bytes:
            await self._evict(int(self.max_bytes * base.LOW_WATER), keep=session_id)

    async def set_pending(self, session_id: str, pending: PendingTurn | None) -> None:
        if pending is None:
            await self.redis.hdel(_meta(session_id), "pending")
        else:
            # Off the loop, as SQLite's store does on its thread: a turn's images (up to 16 MB) took 34 ms to copy.
            blob = await asyncio.to_thread(base.encode_pending, pending)
            await self.redis.hset(_meta(session_id), "pending", blob)

    async def delete(self, session_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(_meta(session_id), _history(session_id), *_tree(session_id))
            pipe.zrem(USED, session_id)
            await pipe.execute()
        await self._resize(keys=[SIZES, TOTAL], args=[session_id, 0])

    async def purge(self, now: float) -> int:
        """Expired sessions go (their keys expire by themselves too), then the least recently used
        while the store is over its size limit; the total is counted again from the sizes."""
        doomed = [i.decode() for i in await self.redis.zrangebyscore(USED, "-inf", now - self.ttl_s)]
        for session_id in doomed:
            await self.delete(session_id)
        sizes = await self.redis.hvals(SIZES)
        await self.redis.set(TOTAL, sum(int(size) for size in sizes))
        return len(doomed) + await self._evict(self.max_bytes, keep=None)

    async def _evict(self, target: int, keep: str | None) -> int:
        """Delete the least recently used sessions (not `keep`) until the total is at most `target`."""
        evicted = 0
        for raw in await self.redis.zrange(USED, 0, -1):
            if int(await self.redis.get(TOTAL) or 0) <= target:
                break
            if raw.decode() != keep:
                await self.delete(raw.decode())
                evicted += 1
        return evicted

    async def claim(self, key: str, now: float, until: float) -> bool:
        """SET NX with the claim's remaining life: atomic across every gateway on this Redis, and gone by itself."""
        ms = max(1, int((until - now) * 1000))
        return bool(await self.redis.set(_claim(key), b"1", nx=True, px=ms))

    async def close(self) -> None:
        await self.redis.aclose()
