"""Tests for gateway.core.live_window: bounds, rate, near-duplicate merging, snapshots and change checks."""

from __future__ import annotations

import hashlib
import io
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageDraw

from gateway.core.live_window import (
    MAX_PENDING,
    THUMB_SIDE,
    LiveLimits,
    LiveWindow,
    LiveWindows,
    Outcome,
    frame_thumb,
    thumb_distance,
    thumb_of,
)
from gateway.engine.contract import ChatImage
from gateway.errors import ErrorCode, GatewayError
from gateway.media.images import ImageLimits, checked_decode

LIMITS = LiveLimits(max_frames=4, max_bytes=1_000_000, frames_per_second=1000.0)
NOISE = np.random.default_rng(7)


def jpeg(image: Image.Image, quality: int = 80) -> ChatImage:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    data = out.getvalue()
    return ChatImage(data, "image/jpeg", image.width, image.height, hashlib.sha256(data).hexdigest())


def scene(box_x: int = 100, brightness: float = 1.0, noise: float = 0.0, box_level: int = 30) -> Image.Image:
    """A 320x240 camera view: a gradient wall with a dark box at box_x, sensor noise optional."""
    wall = np.tile(np.linspace(60, 200, 320, dtype=np.float32), (240, 1))
    wall[80:160, box_x : box_x + 40] = box_level
    wall = wall * brightness + NOISE.normal(0, noise, wall.shape) if noise else wall * brightness
    return Image.fromarray(np.clip(wall, 0, 255).astype(np.uint8)).convert("RGB")


def screen(lines: int) -> Image.Image:
    """A 1280x720 white screen with that many lines of black text."""
    image = Image.new("RGB", (1280, 720), "white")
    draw = ImageDraw.Draw(image)
    for line in range(lines):
        draw.text((40, 40 + 22 * line), f"line {line}: the quick brown fox jumps over the lazy dog", fill="black")
    return image


def offer(window: LiveWindow, image: ChatImage, ts_ms: int, now_s: float = 0.0) -> Outcome:
    assert window.admit(now_s)
    return window.add(image, frame_thumb(image.data), ts_ms)


def distinct(index: int) -> ChatImage:
    """Frames that differ from each other: the box moves 40 px each time."""
    return jpeg(scene(box_x=20 + 40 * index))


# ---- the perceptual hash -----------------------------------------------------------------------


def test_the_hash_is_a_small_grey_thumbnail() -> None:
    """A frame's hash is its 32x32 grey thumbnail, whatever the frame's size."""
    assert len(frame_thumb(jpeg(screen(3)).data)) == THUMB_SIDE * THUMB_SIDE


@pytest.mark.parametrize(
    "later",
    [scene(noise=6.0), scene(brightness=1.03, noise=4.0)],
    ids=["sensor noise", "exposure drift"],
)
def test_a_still_scene_merges(later: Image.Image) -> None:
    """The same view again, with sensor noise or a 3% exposure change and JPEG re-encoding, merges."""
    window = LiveWindow(LIMITS, 0.0)
    offer(window, jpeg(scene()), 0)
    assert offer(window, jpeg(later, quality=70), 500) is Outcome.MERGED


@pytest.mark.parametrize(
    ("before", "after"),
    [(screen(10), screen(11)), (scene(), scene(box_x=130)), (scene(), scene(brightness=0.5))],
    ids=["one new line of text", "an object moved", "the lights dimmed"],
)
def test_a_change_a_user_would_ask_about_is_a_new_frame(before: Image.Image, after: Image.Image) -> None:
    """A new line of text on a screen, a box moving 30 px, or the whole scene halving in brightness is distinct."""
    window = LiveWindow(LIMITS, 0.0)
    offer(window, jpeg(before), 0)
    assert offer(window, jpeg(after), 500) is Outcome.ACCEPTED


def test_a_merged_frame_keeps_the_first_image_and_extends_its_time() -> None:
    """Merging keeps the image first seen (its bytes, so its encoding is reused) and moves its last time."""
    window = LiveWindow(LIMITS, 0.0)
    first = jpeg(scene())
    offer(window, first, 1000)
    offer(window, jpeg(scene(noise=4.0)), 1500)
    snapshot = window.snapshot()
    assert snapshot is not None
    (frame,) = snapshot.frames
    assert (frame.image, frame.first_ts_ms, frame.last_ts_ms, frame.merged) == (first, 1000, 1500, 1)
    assert (window.counters.accepted, window.counters.merged) == (1, 1)


def test_a_slow_drift_shows_once_it_adds_up() -> None:
    """A box lightening 3 levels a frame is within the distance of each frame before, yet becomes a new
    frame: frames compare with the kept image, so creeping change is not merged away for ever."""
    window = LiveWindow(LIMITS, 0.0)
    outcomes = [offer(window, jpeg(scene(box_level=30 + 3 * step), quality=95), step) for step in range(6)]
    assert outcomes[0] is Outcome.ACCEPTED and Outcome.MERGED in outcomes and outcomes.count(Outcome.ACCEPTED) > 1


# ---- bounds ------------------------------------------------------------------------------------


def test_the_oldest_frames_go_past_max_frames() -> None:
    """Six distinct frames in a window of four keep the last four, two counted as evicted."""
    window = LiveWindow(LIMITS, 0.0)
    for index in range(6):
        offer(window, distinct(index), index)
    snapshot = window.snapshot()
    assert snapshot is not None
    assert [frame.first_ts_ms for frame in snapshot.frames] == [2, 3, 4, 5]
    assert window.counters.evicted == 2


def test_the_oldest_frames_go_past_max_bytes() -> None:
    """A window holding at most two frames' bytes keeps the latest frames within them."""
    images = [distinct(index) for index in range(4)]
    limits = LiveLimits(max_frames=10, max_bytes=max(len(image.data) for image in images) * 2, frames_per_second=100.0)
    window = LiveWindow(limits, 0.0)
    for index, image in enumerate(images):
        offer(window, image, index)
    assert window.image_bytes <= limits.max_bytes and len(window) == 2


def test_a_frame_larger_than_the_window_is_too_large() -> None:
    """A frame over the window's byte bound is refused and the window stays as it was."""
    window = LiveWindow(LiveLimits(max_frames=4, max_bytes=100, frames_per_second=10.0), 0.0)
    assert window.admit(0.0)
    image = distinct(0)
    with pytest.raises(GatewayError) as info:
        window.add(image, frame_thumb(image.data), 0)
    assert info.value.code == ErrorCode.TOO_LARGE and len(window) == 0 and window.admit(0.0)


# ---- rate --------------------------------------------------------------------------------------


def test_frames_over_the_rate_are_dropped_and_counted() -> None:
    """At 2 frames/s a burst of five at once takes two (one second's worth) and drops three."""
    window = LiveWindow(LiveLimits(max_frames=4, max_bytes=1_000_000, frames_per_second=2.0), 0.0)
    taken = [window.admit(0.0) for _ in range(5)]
    for _ in range(taken.count(True)):
        window.release()
    assert taken.count(True) == 2 and window.counters.dropped == 3


def test_the_rate_refills_with_time() -> None:
    """After a burst, half a second at 2 frames/s takes one more frame."""
    window = LiveWindow(LiveLimits(max_frames=4, max_bytes=1_000_000, frames_per_second=2.0), 0.0)
    for _ in range(2):
        assert window.admit(0.0)
        window.release()
    assert not window.admit(0.1)
    assert window.admit(0.6)


def test_a_clock_read_out_of_order_takes_no_allowance_away() -> None:
    """An arrival stamped earlier than the last refill neither refills nor drains the rate's allowance."""
    window = LiveWindow(LiveLimits(max_frames=4, max_bytes=1_000_000, frames_per_second=2.0), 10.0)
    assert window.admit(5.0)
    window.release()
    assert window.admit(10.0)


def test_frames_waiting_for_their_hash_are_bounded() -> None:
    """While MAX_PENDING admitted frames await their hash, the next is dropped, rate or not; one
    released makes room."""
    window = LiveWindow(LIMITS, 0.0)
    assert all(window.admit(0.0) for _ in range(MAX_PENDING))
    assert not window.admit(0.0)
    window.release()
    assert window.admit(0.0)


# ---- snapshots and change ----------------------------------------------------------------------


def test_a_snapshot_gives_the_latest_frames_oldest_first_with_their_times() -> None:
    """snapshot(2) of four frames gives the last two, oldest first, with the first and last times."""
    window = LiveWindow(LIMITS, 0.0)
    for index in range(4):
        offer(window, distinct(index), 1000 * index)
    snapshot = window.snapshot(2)
    assert snapshot is not None
    assert [frame.first_ts_ms for frame in snapshot.frames] == [2000, 3000]
    assert (snapshot.first_ts_ms, snapshot.last_ts_ms) == (2000, 3000)


def test_an_empty_window_has_no_snapshot() -> None:
    """A window with no frame yet gives None, so a live turn can refuse plainly."""
    assert LiveWindow(LIMITS, 0.0).snapshot() is None


def test_only_a_new_distinct_frame_is_a_change() -> None:
    """After a snapshot, a merged frame is no change (a watch turn skips) and a distinct one is."""
    window = LiveWindow(LIMITS, 0.0)
    offer(window, jpeg(scene()), 0)
    watched = window.snapshot()
    assert watched is not None
    offer(window, jpeg(scene(noise=4.0)), 500)
    assert not window.changed_since(watched.version)
    offer(window, jpeg(scene(box_x=160)), 1000)
    assert window.changed_since(watched.version)


# ---- sources -----------------------------------------------------------------------------------


def test_each_source_has_its_own_window() -> None:
    """Frames from the camera and the screen go to two windows; asking again gives the same one."""
    windows = LiveWindows(LIMITS, max_sources=2)
    camera = windows.window("camera", 0.0)
    assert windows.window("screen", 0.0) is not camera and windows.window("camera", 1.0) is camera


def test_a_source_past_max_sources_is_too_large() -> None:
    """A third source where two are allowed is refused; closing one makes room."""
    windows = LiveWindows(LIMITS, max_sources=2)
    windows.window("camera", 0.0)
    windows.window("screen", 0.0)
    with pytest.raises(GatewayError) as info:
        windows.window("door", 0.0)
    assert info.value.code == ErrorCode.TOO_LARGE
    windows.close("camera")
    assert windows.window("door", 0.0) is windows.get("door")


# ---- invariants --------------------------------------------------------------------------------


ARRIVALS = st.lists(st.tuples(st.floats(0.0, 0.5), st.integers(0, 40), st.integers(100, 4000)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(arrivals=ARRIVALS, max_frames=st.integers(1, 5), rate=st.sampled_from([1.0, 2.0, 10.0]))
def test_any_stream_of_frames_keeps_the_window_within_its_bounds(
    arrivals: list[tuple[float, int, int]], max_frames: int, rate: float
) -> None:
    """Whatever frames arrive when: within the frame and byte bounds, no frame within the merge distance
    of the one before it, every arrival counted once as accepted, merged or dropped."""
    limits = LiveLimits(max_frames=max_frames, max_bytes=10_000, frames_per_second=rate)
    window = LiveWindow(limits, 0.0)
    now_s = 0.0
    for ts_ms, (gap_s, level, size) in enumerate(arrivals):
        now_s += gap_s
        if window.admit(now_s):
            image = ChatImage(bytes(size), "image/jpeg", 1, 1, str(ts_ms))
            window.add(image, bytes([level * 6]) * THUMB_SIDE * THUMB_SIDE, ts_ms)
        snapshot = window.snapshot()
        frames = snapshot.frames if snapshot else ()
        assert len(frames) <= max_frames and sum(len(frame.image.data) for frame in frames) <= limits.max_bytes
        assert all(thumb_distance(a.thumb, b.thumb) > limits.merge_distance for a, b in pairwise(frames))
    counted = window.counters
    assert counted.accepted + counted.merged + counted.dropped == len(arrivals)


@pytest.mark.parametrize("make", [lambda: jpeg(screen(3)).data, lambda: jpeg(scene(noise=6.0)).data])
def test_a_frames_hash_from_its_checking_decode_is_the_hash_of_its_bytes(make: Any) -> None:
    """The hash taken from the decode that checks a live frame (reduced to its scale) equals `frame_thumb` of its bytes."""
    data = make()
    _, pixels = checked_decode(data, ImageLimits(10_000_000, 10_000_000), reduce_to=THUMB_SIDE)
    assert thumb_of(pixels) == frame_thumb(data)
