"""The batch's KV buffers have spare rows: joining writes only the new rows, leaving moves only the last rows."""

from __future__ import annotations

import torch

from gateway.engine.contract import ChatMessage, GenerationRequest, SamplingParams
from gateway.engine.local.batch import Batch, Sequence
from gateway.engine.local.detok import TextStream
from gateway.engine.local.encoder_cache import EncoderCache
from gateway.engine.local.kv import GrowingLayer
from gateway.engine.local.loader import LoadedModel, load_model
from gateway.engine.local.slots import RowBuffers, moves_for
from tests.conftest import DemoDirs


def layer_of(rows: torch.Tensor) -> GrowingLayer:
    layer = GrowingLayer()
    layer.lazy_initialization(rows, rows)
    layer.keys, layer.values = rows.clone(), rows.clone()
    return layer


def test_leaving_moves_only_rows_past_the_kept_count_into_the_gaps() -> None:
    """Keeping rows 0, 2, 3 and 5 of six moves row 5 into row 1; rows 0, 2 and 3 stay where they are."""
    assert moves_for([0, 2, 3, 5]) == ([(5, 1)], [0, 5, 2, 3])
    assert moves_for([1, 2]) == ([(2, 0)], [2, 1])
    assert moves_for([0, 1]) == ([], [0, 1])


def test_joins_after_the_first_write_into_spare_rows_and_leaves_move_rows_in_place() -> None:
    """After one copy into buffers with spare rows, a join writes its row into the same buffer, and a leave
    moves the last row into the gap: the buffer is never reallocated and every row keeps its states."""
    rows = [torch.full((1, 2, 5, 4), float(i)) for i in range(4)]
    buffers, mine = RowBuffers(max_rows=8), layer_of(rows[0])
    buffers.append(0, mine, layer_of(rows[1]))
    address = mine.keys.data_ptr() if mine.keys is not None else 0
    for row in rows[2:]:
        buffers.append(0, mine, layer_of(row))
    assert mine.keys is not None and mine.keys.data_ptr() == address
    torch.testing.assert_close(mine.keys, torch.cat(rows))
    moves, order = moves_for([0, 2, 3])
    assert buffers.owns([mine])
    buffers.keep(0, mine, moves, 3)
    assert mine.keys.data_ptr() == address
    torch.testing.assert_close(mine.keys, torch.cat([rows[i] for i in order]))


def sequence(loaded: LoadedModel) -> Sequence:
    request = GenerationRequest(messages=[ChatMessage("user", "x")], params=SamplingParams(temperature=0.0))
    return Sequence(request=request, stream=TextStream(loaded.tokenizer, ()))


def test_a_running_batch_takes_a_turn_without_copying_the_others(demo_dirs: DemoDirs) -> None:
    """Turns joining a running batch land in its spare rows: the batch's buffer stays where it is, and the
    rows already there are untouched; a finished turn leaves the same way."""
    loaded = load_model(demo_dirs.text_model)
    batch = Batch(loaded, EncoderCache(0, None), max_rows=8)
    texts = ["a long first question about the sky and the sea", "hi", "a second, shorter one", "ok"]
    for text in texts[:2]:
        seq = sequence(loaded)
        _, cache, mask = batch.prefill(seq, loaded.prompt.build([ChatMessage("user", text)]))
        batch.join([seq], cache, mask)
    batch.decode([5, 5])  # the prefills' exact-size buffers grow: the next join copies the batch once
    for text in texts[2:]:
        address, before = batch.cache.layers[0]._key_buffer.data_ptr(), batch.cache.layers[0].keys.clone()
        seq = sequence(loaded)
        _, cache, mask = batch.prefill(seq, loaded.prompt.build([ChatMessage("user", text)]))
        batch.join([seq], cache, mask)
        batch.decode([5] * len(batch))
    assert batch.cache.layers[0]._key_buffer.data_ptr() == address
    torch.testing.assert_close(batch.cache.layers[0].keys[:3, :, : before.shape[2]], before)
    last = batch.sequences[3]
    batch.keep([0, 2, 3])
    assert batch.cache.layers[0]._key_buffer.data_ptr() == address
    assert batch.sequences[1] is last and len(batch.sequences) == batch.mask.shape[0] == 3
