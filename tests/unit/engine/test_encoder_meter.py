"""The vision tower's passes and time, counted by hooks on the tower of whichever family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gateway.engine.local.encoder_meter import EncoderMeter, vision_tower


class Inner(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        setattr(self, name, nn.Linear(2, 2))


class Model(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.model = Inner(name)


@pytest.mark.parametrize("name", ["visual", "vision_tower", "vision_model"])
def test_each_pass_of_the_tower_is_counted_and_timed(name: str) -> None:
    """Every forward pass of the family's tower counts once, with its time; nothing else counts."""
    model = Model(name)
    meter = EncoderMeter(model)
    tower = vision_tower(model)
    assert tower is getattr(model.model, name)
    for _ in range(3):
        tower(torch.ones(1, 2))
    assert meter.passes == 3 and meter.seconds > 0


def test_a_text_model_counts_nothing() -> None:
    """A model with no vision tower has no meter to read: zero passes."""
    model = nn.Sequential(nn.Linear(2, 2))
    assert vision_tower(model) is None and EncoderMeter(model).passes == 0
