"""Selection: the one "where" of every hook technique (layers, steps, branches, heads, site kinds)."""

from __future__ import annotations

import json

import pytest
import torch

from vditscope.adapters import AttentionSite
from vditscope.capture import Selection
from vditscope.capture.intervene import AttentionEdit
from vditscope.capture.selection import checked_site_layers, step_range
from vditscope.capture.transfer import TransferConfig


def site(layer: int, kind: str = "self") -> AttentionSite:
    return AttentionSite(f"blocks.{layer}.{kind}", layer, kind, torch.nn.Identity())  # type: ignore[arg-type]


def test_none_selects_everything() -> None:
    where = Selection()
    assert where.matches(7, 123, "uncond") and where.takes_site(site(3, "cross"))
    assert where.head_indices(3) == [0, 1, 2]


def test_matching_follows_every_field() -> None:
    where = Selection(layers={1, 2}, steps=range(2, 4), branches={"cond"}, heads={5, 0}, kinds={"self"})
    assert where.matches(1, 2, "cond") and where.matches(2, 3, "cond")
    assert not where.matches(0, 2, "cond")  # layer
    assert not where.matches(1, 4, "cond") and not where.matches(1, 1, "cond")  # half-open step range
    assert not where.matches(1, 2, "uncond")  # branch
    assert where.matches(1, 2)  # no branch given: layer and step only
    assert where.takes_site(site(1)) and not where.takes_site(site(1, "cross")) and not where.takes_site(site(3))
    assert where.head_indices(4) == [0]  # head 5 does not exist in a 4-head call
    assert Selection(steps={0, 5}).takes_step(5) and not Selection(steps={0, 5}).takes_step(3)


def test_fields_are_normalized_to_frozen_sets() -> None:
    where = Selection(layers=[2, 1], heads=(0,), branches=["cond"])  # type: ignore[arg-type]
    assert where.layers == frozenset({1, 2}) and isinstance(where.layers, frozenset)
    assert where == Selection(layers=frozenset({1, 2}), heads=frozenset({0}), branches=frozenset({"cond"}))
    assert Selection(layers={1}, owner="an edit") == Selection(layers={1})  # the owner only names messages


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": set()}, "the layer set is empty"),
        ({"heads": set()}, "the head set is empty"),
        ({"branches": set()}, "the branch set is empty"),
        ({"kinds": set()}, "the kind set is empty"),
        ({"layers": set(), "owner": "an edit"}, "the layer set of an edit is empty"),
        ({"branches": {"both"}}, r"branches must be among cond, uncond, got \['both'\]"),
        ({"kinds": {"joint"}}, "site kinds must be among self, cross"),
        ({"steps": range(3, 3)}, r"a step range must be start < stop with start >= 0, got \(3, 3\)"),
        ({"steps": range(-1, 2)}, "a step range must be"),
    ],
)
def test_checks(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Selection(**kwargs)


def test_an_empty_step_set_selects_no_step() -> None:
    assert not Selection(steps=set()).takes_step(0)


def test_layer_range_messages() -> None:
    with pytest.raises(ValueError, match=r"^layer 7 is out of range: the model has 4 layers \(0-3\)$"):
        Selection(layers={7, 1}).check_layers(4)
    Selection(layers={3}).check_layers(4)
    Selection().check_layers(4)
    sites = [site(0), site(0, "cross"), site(1)]
    assert checked_site_layers([1], sites) == {1} and checked_site_layers(None, sites) is None
    with pytest.raises(ValueError, match="layer 2 is out of range: the model has 2 layers"):
        checked_site_layers([2], sites)
    with pytest.raises(ValueError, match=r"^the layer set is empty$"):
        checked_site_layers([], sites)


def test_step_range() -> None:
    assert step_range((2, 5)) == range(2, 5) and step_range(["1", "2"]) == range(1, 2)
    with pytest.raises(ValueError, match=r"got \(5, 2\)"):
        step_range((5, 2))


def test_edit_and_transfer_configs_hold_the_same_selection() -> None:
    edit = AttentionEdit(bottom_k=0.5, layers={1}, heads={0}, steps=(1, 3), branches={"uncond"})
    assert edit.where == Selection(layers={1}, steps=range(1, 3), branches={"uncond"}, heads={0}, kinds={"self"})
    assert edit.matches(1, 2, "uncond") and not edit.matches(1, 3, "uncond") and not edit.matches(1, 2, "cond")
    # the JSON form of plans on disk is unchanged: no selection in it, and it round-trips
    data = edit.to_dict()
    assert set(data) == {"bottom_k", "top_p", "temperature", "layers", "heads", "steps", "branches", "mask", "window"}
    assert AttentionEdit.from_dict(json.loads(json.dumps(data))) == edit
    with pytest.raises(ValueError, match="the head set of an edit is empty"):
        AttentionEdit(heads=set())
    config = TransferConfig(layers=frozenset({0, 2}), steps=(0, 2))
    assert config.where == Selection(layers={0, 2}, steps=range(2), kinds={"self"})
    assert config.matches(2, 1) and not config.matches(1, 1) and not config.matches(2, 2)
    with pytest.raises(ValueError, match="the layer set of a transfer is empty"):
        TransferConfig(layers=frozenset())
