"""Delta versions: the rows that moved plus the dense tensors, applied only onto the exact parent state."""

from __future__ import annotations

import pytest
import torch

from models.delta import DeltaError, apply_delta, cpu_state, make_delta, state_checksum
from models.policy import PolicyConfig, TwoTowerPolicy
from models.serialization import PolicyIntegrityError, pack, pack_delta, unpack

CFG = PolicyConfig(user_features=4, text_dim=8, dim=8, item_buckets=64, user_buckets=64)


def moved(model: TwoTowerPolicy, rows: list[int], by: float = 0.1) -> TwoTowerPolicy:
    child = TwoTowerPolicy(CFG)
    child.load_state_dict(model.state_dict())
    with torch.no_grad():
        child.item_id.weight[rows] += by
        child.user_id.weight[3] += 1e-9          # below the tolerance: stays behind
        child.text_proj.bias += 0.5
    return child


def test_delta_ships_moved_rows_and_dense_tensors_and_rebuilds_the_published_state():
    torch.manual_seed(0)
    parent = TwoTowerPolicy(CFG)
    child = moved(parent, [2, 7])
    delta, published = make_delta(cpu_state(parent), cpu_state(child), half=False)
    assert delta["item_id.weight.rows"].tolist() == [2, 7] and delta["user_id.weight.rows"].tolist() == []
    assert "text_proj.bias" in delta and "history_proj.weight" not in delta      # unchanged dense stays behind
    assert torch.equal(published["user_id.weight"], parent.user_id.weight.detach())    # the tiny move waits
    assert torch.equal(apply_delta(cpu_state(parent), delta)["item_id.weight"], child.item_id.weight.detach())
    again, _ = make_delta(published, cpu_state(child), tolerance=0.0, half=False)   # left-behind change ships when it counts
    assert again["user_id.weight.rows"].tolist() == [3]


def test_delta_version_round_trip_and_refusals():
    torch.manual_seed(0)
    parent = TwoTowerPolicy(CFG)
    child = moved(parent, [5])
    header, blob = pack_delta(child, cpu_state(parent), "default", 2, parent=1, key=b"k")
    _, published = make_delta(cpu_state(parent), cpu_state(child))
    full_header, full_blob = pack(parent, "default", 1, key=b"k")
    assert header["kind"] == "delta" and header["parent_state"] == full_header["state"]
    assert len(blob) < len(full_blob) - 2 * 63 * CFG.dim * 4   # two tables minus the moved row
    loaded = unpack(header, blob, key=b"k", base=parent)
    assert state_checksum(cpu_state(loaded)) == header["state"] == state_checksum(published)

    with pytest.raises(PolicyIntegrityError) as missing:
        unpack(header, blob, key=b"k")
    assert missing.value.reason == "parent"
    with pytest.raises(PolicyIntegrityError) as other:
        unpack(header, blob, key=b"k", base=moved(parent, [1]))
    assert other.value.reason == "parent"
    forged = dict(header, parent_state=state_checksum(cpu_state(moved(parent, [1]))))
    with pytest.raises(PolicyIntegrityError) as unsigned_change:
        unpack(forged, blob, key=b"k", base=moved(parent, [1]))
    assert unsigned_change.value.reason == "signature"
    tampered = bytearray(blob)
    tampered[-3] ^= 0x01
    with pytest.raises(PolicyIntegrityError) as bits:
        unpack(header, bytes(tampered), key=b"k", base=parent)
    assert bits.value.reason == "checksum"


def test_malformed_deltas_are_refused():
    parent = cpu_state(TwoTowerPolicy(CFG))
    delta, _ = make_delta(parent, {k: v + 1 for k, v in parent.items()})
    for name, bad in (("item_id.weight.rows", torch.tensor([64])), ("item_id.weight.rows", torch.tensor([1, 1])),
                      ("text_proj.bias", torch.zeros(3))):
        broken = dict(delta, **{name: bad})
        if name.endswith("rows"):
            broken["item_id.weight.values"] = torch.zeros(len(bad), CFG.dim)
        with pytest.raises(DeltaError):
            apply_delta(parent, broken)
    with pytest.raises(DeltaError):
        apply_delta(parent, {k: v for k, v in delta.items() if k != "user_id.weight.rows"})
    with pytest.raises(DeltaError):
        apply_delta(parent, {**delta, "not_a_tensor_of_ours": torch.zeros(1)})


def test_half_precision_deltas_ship_half_the_bytes_and_publish_exactly_what_readers_rebuild():
    torch.manual_seed(0)
    parent = TwoTowerPolicy(CFG)
    child = moved(parent, [2, 7])
    delta, published = make_delta(cpu_state(parent), cpu_state(child))
    assert delta["item_id.weight.values"].dtype == torch.float16 and delta["text_proj.bias"].dtype == torch.float16
    assert delta["item_id.weight.rows"].tolist() == [2, 7] and delta["user_id.weight.rows"].tolist() == []
    rebuilt = apply_delta(cpu_state(parent), delta)
    assert all(t.dtype == torch.float32 for t in rebuilt.values())
    assert state_checksum(rebuilt) == state_checksum(published)
    # The moved rows hold the child's values rounded to half precision; every other row is the parent's, exactly.
    assert torch.equal(rebuilt["item_id.weight"][[2, 7]], child.item_id.weight.detach()[[2, 7]].half().float())
    assert torch.equal(rebuilt["item_id.weight"][:2], parent.item_id.weight.detach()[:2])
    # Made again from what was published (the loop and the chain both make it): the same delta, the same state.
    again, same = make_delta(cpu_state(parent), published)
    assert state_checksum(same) == state_checksum(published)
    assert all(torch.equal(again[k], delta[k]) for k in delta)
    # Nothing moved since: nothing ships (rounding left behind is not a move).
    empty, _ = make_delta(published, cpu_state(child))
    assert empty["item_id.weight.rows"].tolist() == [] and "text_proj.bias" not in empty
    half_bytes = sum(t.numel() * t.element_size() for t in delta.values())
    full_bytes = sum(t.numel() * t.element_size() for t in make_delta(cpu_state(parent), cpu_state(child), half=False)[0].values())
    assert half_bytes < 0.6 * full_bytes


def test_values_beyond_half_precision_ship_in_full():
    parent = cpu_state(TwoTowerPolicy(CFG))
    state = {k: v.clone() for k, v in parent.items()}
    state["text_proj.bias"] = state["text_proj.bias"] + 1e5       # beyond float16's range
    delta, published = make_delta(parent, state)
    assert delta["text_proj.bias"].dtype == torch.float32
    assert torch.equal(apply_delta(parent, delta)["text_proj.bias"], state["text_proj.bias"])


def test_a_delta_made_once_packs_to_the_same_bytes_as_one_made_again():
    """The learning loop makes the delta to learn what readers will hold and hands it on; packing it must
    give exactly what packing the published candidate from scratch gives."""
    torch.manual_seed(0)
    parent = TwoTowerPolicy(CFG)
    candidate = moved(parent, [4, 9])
    changes, published = make_delta(cpu_state(parent), cpu_state(candidate))
    candidate.load_state_dict(published)
    header, blob = pack_delta(candidate, cpu_state(parent), "default", 2, parent=1, key=b"k", created_at=1.0)
    again_header, again_blob = pack_delta(candidate, cpu_state(parent), "default", 2, parent=1, key=b"k",
                                          created_at=1.0, changes=changes)
    assert again_blob == blob and again_header == header
