"""Each image's token span from per-image counts, and an image tensor's rows after the first images."""

from __future__ import annotations

import torch

from gateway.engine.local.image_layout import Stacked, image_spans

IMAGE, BREAK = 7, 8


def test_adjacent_images_split_by_their_counts() -> None:
    """Two images' tokens in one run (no text between them) are told apart by each image's count."""
    ids = [1, IMAGE, IMAGE, IMAGE, IMAGE, IMAGE, 2]
    assert image_spans(ids, {IMAGE}, [2, 3]) == ((1, 3), (3, 6))


def test_a_span_runs_from_an_images_first_token_to_its_last() -> None:
    """Tokens between an image's tiles (here a text token) fall inside its span; text after it does not."""
    ids = [1, IMAGE, BREAK, IMAGE, 3, IMAGE, 2, IMAGE]
    assert image_spans(ids, {IMAGE, BREAK}, [3, 1, 1]) == ((1, 4), (5, 6), (7, 8))
    assert image_spans(ids, {IMAGE}, [1, 2, 1]) == ((1, 2), (3, 6), (7, 8))


def test_counts_that_do_not_add_up_give_no_spans() -> None:
    """More or fewer image tokens than the counts say, or an image with none: no spans (no reuse)."""
    ids = [IMAGE, IMAGE, 1]
    assert image_spans(ids, {IMAGE}, [1]) is None
    assert image_spans(ids, {IMAGE}, [2, 1]) is None
    assert image_spans(ids, {IMAGE}, [0, 2]) is None


def test_stacked_rows_after_the_first_images() -> None:
    """Along the images' axis, the rows of the images after the first k; the other axes untouched."""
    tensor = torch.arange(2 * 6).view(2, 6)
    rows = Stacked(axis=1, sizes=(1, 3, 2))
    assert rows.after(tensor, 1).tolist() == [[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]]
    assert rows.after(tensor, 2).tolist() == [[4, 5], [10, 11]]
    assert rows.after(tensor, 0).shape == (2, 6)
