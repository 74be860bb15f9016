"""Where each of a prompt's images sits in its inputs: its token span and its share of each image tensor."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch

Span = tuple[int, int]


@dataclass(frozen=True)
class Stacked:
    """One image tensor of a prompt: its images' parts stacked along `axis`, image i's `sizes[i]` long."""

    axis: int
    sizes: tuple[int, ...]

    def after(self, tensor: torch.Tensor, images: int) -> torch.Tensor:
        """The parts of the images after the first `images`."""
        start = sum(self.sizes[:images])
        return tensor.narrow(self.axis, start, tensor.shape[self.axis] - start)

    def pick(self, tensor: torch.Tensor, images: Sequence[int]) -> torch.Tensor:
        """The parts of these images (prompt indices), in this order."""
        starts = [sum(self.sizes[:i]) for i in images]
        return torch.cat([tensor.narrow(self.axis, start, self.sizes[i]) for start, i in zip(starts, images)], dim=self.axis)


@dataclass(frozen=True)
class ImageLayout:
    """What a prompt's suffix after held KV needs to take only the images it holds."""

    spans: tuple[Span, ...]  # each image's [first, last + 1) image-typed token positions, in prompt order
    stacked: dict[str, Stacked]  # the tensors holding each image's own rows (pixels, sizes, grids)
    per_token: tuple[str, ...]  # [1, prompt_tokens] tensors a suffix slices from its first token
    tokens: tuple[int, ...] = ()  # each image's image-typed tokens (its span may hold structural ones too)
    # A prompt's clips, where the family reads video natively: each one's span of video tokens, its key (its
    # sha256), and the tensors holding each clip's own rows (pixels, grid, seconds per temporal patch).
    videos: tuple[Span, ...] = ()
    video_keys: tuple[str, ...] = ()
    video_stacked: dict[str, Stacked] = field(default_factory=dict)


def image_spans(input_ids: Sequence[int], image_ids: Collection[int], counts: Sequence[int]) -> tuple[Span, ...] | None:
    """Each image's span: the image-typed tokens in prompt order, `counts[i]` of them image i's (structural
    tokens between its tiles fall inside the span). None where the counts do not add up to the prompt's."""
    positions = [i for i, token in enumerate(input_ids) if token in image_ids]
    if sum(counts) != len(positions) or not all(counts):
        return None
    spans: list[Span] = []
    taken = 0
    for count in counts:
        spans.append((positions[taken], positions[taken + count - 1] + 1))
        taken += count
    return tuple(spans)
