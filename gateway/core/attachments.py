"""A turn's images and videos loaded off the event loop: checked and decoded on a decode pool, URLs fetched apart."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from gateway.config import Settings
from gateway.core.fetch import VIDEO, data_url_bytes, fetch_image_bytes
from gateway.core.live_window import THUMB_SIDE, thumb_of
from gateway.core.url_guard import FetchPolicy
from gateway.engine.contract import ChatImage
from gateway.media.images import ImageLimits, check_image, checked_decode, yield_cpu
from gateway.media.video import DecodedVideo, VideoLimits, decode_video


class Attachments:
    """Checks and fetches for both front ends. URL fetches wait on the network and decoding burns CPU: each on a
    pool of its own, so neither starves the other, and neither shares asyncio's default executor."""

    def __init__(self, settings: Settings) -> None:
        self.fetch_policy = FetchPolicy.from_settings(settings)
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self.video_limits = VideoLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_duration_s=settings.max_video_duration_s,
            max_frames=settings.max_video_frames,
            fps=settings.video_fps,
        )
        self._fetch_slots = asyncio.Semaphore(settings.image_fetch_concurrency)
        self._fetch_pool = ThreadPoolExecutor(settings.image_fetch_concurrency, thread_name_prefix="gateway-fetch")
        self._decode_pool = ThreadPoolExecutor(
            max(1, settings.image_workers), thread_name_prefix="gateway-decode", initializer=yield_cpu
        )

    def close(self) -> None:
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    async def load(self, blobs: Sequence[bytes], urls: Sequence[str]) -> tuple[ChatImage, ...]:
        """Attachments, then URL images, checked on the pools; numbered in that order."""
        loads = [self.check_blob(blob, i) for i, blob in enumerate(blobs)]
        loads += [self.load_url(url, len(blobs) + i) for i, url in enumerate(urls)]
        results = await asyncio.gather(*loads, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return tuple(results)  # type: ignore[arg-type]

    async def load_videos(self, blobs: Sequence[bytes]) -> tuple[DecodedVideo, ...]:
        """Videos decoded into sampled frames on the decode pool (numbered from 1 in errors, as the model sees them)."""
        loop = asyncio.get_running_loop()
        decodes = [
            loop.run_in_executor(self._decode_pool, decode_video, blob, self.video_limits, i) for i, blob in enumerate(blobs, 1)
        ]
        return tuple(await asyncio.gather(*decodes))

    async def load_video_url(self, url: str, index: int) -> DecodedVideo:
        """A video by data: URI or http(s) URL (fetched as image URLs are, behind the SSRF guard), decoded on the pool."""
        loop = asyncio.get_running_loop()
        if url[:5].lower() == "data:":
            blob = data_url_bytes(url, self.video_limits.max_bytes, VIDEO)
        else:
            async with self._fetch_slots:
                blob = await loop.run_in_executor(self._fetch_pool, fetch_image_bytes, url, self.fetch_policy, VIDEO)
        return await loop.run_in_executor(self._decode_pool, decode_video, blob, self.video_limits, index)

    async def check_live_frame(self, blob: bytes) -> tuple[ChatImage, bytes]:
        """A live frame checked as an image is, and its perceptual hash, on the decode pool, from one decode: a
        JPEG's at the scale its hash needs (the model's pixels are decoded from the bytes as sent, at its turn)."""

        def check() -> tuple[ChatImage, bytes]:
            image, pixels = checked_decode(blob, self.limits, reduce_to=THUMB_SIDE)
            return image, thumb_of(pixels)

        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, check)

    async def check_blob(self, blob: bytes, index: int) -> ChatImage:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_pool, check_image, blob, self.limits, index)

    async def load_url(self, url: str, index: int) -> ChatImage:
        """A data: URI is decoded here; an http(s) URL waits for one of the fetch slots both front ends share."""
        if url[:5].lower() == "data:":
            return await self.check_blob(data_url_bytes(url, self.limits.max_bytes), index)
        async with self._fetch_slots:
            loop = asyncio.get_running_loop()
            blob = await loop.run_in_executor(self._fetch_pool, fetch_image_bytes, url, self.fetch_policy)
        return await self.check_blob(blob, index)
