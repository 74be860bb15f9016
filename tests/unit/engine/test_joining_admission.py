"""Which waiting prompts join the rows fed beside a decoding batch, and whether a joiner's vision tower has a step of its own."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import torch

from gateway.engine.local.image_layout import ImageLayout
from gateway.engine.local.joining import PATIENCE, Joining, Row
from gateway.engine.local.prefix_cache import HeldPrefix
from gateway.engine.local.prompt import ModelInputs

CHUNK = 256


def waiting_row(new_tokens: int) -> Row:
    turn = SimpleNamespace(request=SimpleNamespace(warm_up=False))
    return cast(Row, (turn, SimpleNamespace(prompt_tokens=new_tokens), None))


def feed(joining: Joining, taken: list[Row]) -> None:
    """The admitted rows join, then one pass feeds every row its columns (as `JoiningRows.chunk` does) and
    the rows whose prompts ended leave."""
    for row in taken:
        joining.rows.seqs.append(row[0])
        joining.rows.ids.append(torch.zeros(row[1].prompt_tokens))
    columns = joining.columns(True)
    assert columns is not None
    kept = [(seq, ids[columns:]) for seq, ids in zip(joining.rows.seqs, joining.rows.ids) if len(ids) > columns]
    joining.rows.seqs, joining.rows.ids = [seq for seq, _ in kept], [ids for _, ids in kept]


def test_a_long_prompt_passed_over_joins_when_the_rows_end_whatever_arrives_meanwhile() -> None:
    """A 139-token prompt (a live turn's clip) arriving while a 600-token one is fed, 23-token prompts
    arriving every step: nothing joins beside the long row until its left fits (none here: the short ones
    would be padded to its width), and the prompt passed over longest joins first once it has ended, the
    short ones the step after: 3 passes of the long row, then its turn. It used to wait while short ones
    kept joining and each shrank the long row's share of the chunk (not joined in these 5 steps)."""
    joining = Joining(CHUNK)
    feed(joining, [waiting_row(600 + CHUNK)])  # fed one chunk already: 600 left
    clip = waiting_row(139)
    joining.waiting.append(clip)
    joined: list[list[Row]] = []
    for _ in range(5):
        joining.waiting.append(waiting_row(23))
        joined.append(joining.admit(chunked=True))
        feed(joining, joined[-1])
    assert [len(taken) for taken in joined] == [0, 0, 0, 1, 5]
    assert joined[3] == [clip]


def test_prompts_arriving_together_go_shortest_first_and_those_passed_over_in_arrival_order() -> None:
    """Prompts arriving together: the short ones that fit one pass join first; the long ones passed over
    then join one per empty set of rows (two do not fit one chunk) in arrival order, ahead of a shorter one
    arriving later; with nobody decoding all join at once."""
    assert PATIENCE == 1
    joining = Joining(CHUNK)
    rows = [waiting_row(n) for n in (400, 300, 50, 60)]
    joining.waiting.extend(rows)
    assert joining.admit(chunked=True) == [rows[2], rows[3]]
    short = waiting_row(10)
    joining.waiting.append(short)
    assert joining.admit(chunked=True) == [rows[0]]  # the rows ended (none fed here): the first passed over
    assert joining.admit(chunked=True) == [rows[1]]  # the short one, passed over since, does not fit beside it
    assert joining.admit(chunked=True) == [short]
    late = [waiting_row(500), waiting_row(10)]
    joining.waiting.extend(late)
    assert joining.admit(chunked=False) == late and not joining.waiting


def test_a_prompt_joins_beside_rows_only_when_the_pass_stays_within_a_chunk_and_unpadded() -> None:
    """Beside rows being fed, a prompt joins when every row is still fed all it has left within one chunk
    and no row is padded past about twice its tokens (ragged.similar); else it waits for the rows to end."""
    for left, new, joins in [(23, 30, True), (100, 23, False), (23, 100, False), (130, 130, False), (120, 100, True)]:
        joining = Joining(CHUNK)
        feed(joining, [waiting_row(left + CHUNK)])  # a long row, fed one chunk, has `left` tokens left
        joining.waiting.append(waiting_row(new))
        assert bool(joining.admit(chunked=True)) is joins, (left, new)


def image_row(tokens: int, images: list[tuple[int, int]], held: int = 0) -> Row:
    layout = ImageLayout(spans=tuple(images), stacked={}, per_token=())
    inputs = ModelInputs(torch.zeros(1, tokens, dtype=torch.long), {"pixel_values": torch.zeros(1)}, layout=layout)
    prefix = cast(HeldPrefix, SimpleNamespace(length=held)) if held else None
    return cast(Row, (object(), inputs, prefix))


def test_a_small_vision_tower_runs_in_the_step_of_the_first_chunk_a_big_one_in_its_own() -> None:
    """Beside a decoding batch, the joiners' new image tokens decide: up to half a chunk the tower shares
    the step of their first chunk; more, and it is a step's pass of its own (the running turns decode
    between); images held as KV count for nothing; with nobody decoding it never has a step of its own."""
    joining = Joining(CHUNK)
    clip = image_row(160, [(10, 80), (80, 150)])  # 140 image tokens
    assert joining.tower_apart(True, [clip])
    assert not joining.tower_apart(True, [image_row(100, [(10, 80)])])  # 70: a live turn's new frames
    assert not joining.tower_apart(True, [image_row(160, [(10, 80), (80, 150)], held=80)])  # one held
    assert joining.tower_apart(True, [image_row(100, [(10, 80)]), image_row(100, [(10, 80)])])  # together
    assert not joining.tower_apart(False, [clip])
    assert not Joining(0).tower_apart(True, [clip])


def test_with_nobody_decoding_only_a_prompt_longer_than_a_chunk_makes_the_rows_chunked() -> None:
    """Nobody decoding, prompts within a chunk are fed whole together; one longer than a chunk, waiting or fed,
    makes the rows chunked: it waits for the short ones to go (shortest first), joins when no row is fed, and is
    fed a chunk per pass until what it has left fits one. Chunking off, nothing is chunked."""
    joining = Joining(CHUNK)
    short = [waiting_row(n) for n in (40, 30)]
    joining.waiting.extend(short)
    assert not joining.chunked(False) and joining.chunked(True)
    long = waiting_row(2 * CHUNK + 10)
    joining.waiting.append(long)
    assert joining.chunked(False)
    taken = joining.admit(joining.chunked(False))
    assert taken == short[::-1]
    feed(joining, taken)
    assert joining.admit(joining.chunked(False)) == [long]
    feed(joining, [long])
    assert joining.chunked(False) and len(joining.rows.ids[0]) == CHUNK + 10  # fed one chunk
    feed(joining, [])
    assert not joining.chunked(False) and joining.columns(False) is None  # 10 left: fed whole
    off = Joining(0)
    off.waiting.append(waiting_row(2 * CHUNK))
    assert not off.chunked(False)


def test_a_warm_up_is_fed_at_most_its_own_chunk_per_pass() -> None:
    """A warm-up fills idle time, and a turn arriving waits for its pass: past `warm_up_chunk_tokens` it is fed a
    chunk at a time even with nobody decoding, that many columns per pass; a turn of the same length is fed whole."""
    joining = Joining(CHUNK, 64)
    warm = cast(Row, (SimpleNamespace(request=SimpleNamespace(warm_up=True)), SimpleNamespace(prompt_tokens=100), None))
    assert joining.long_row(warm) and not joining.long_row(waiting_row(100))
    joining.waiting.append(warm)
    assert joining.chunked(decoding=False)
    joining.rows.seqs.append(warm[0])
    joining.rows.ids.append(torch.zeros(100))
    joining.waiting.clear()
    assert joining.columns(True) == 64
