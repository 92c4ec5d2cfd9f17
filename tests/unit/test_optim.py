"""LazyRowAdam: Adam on dense weights, and on a table's rows only when they have a gradient."""

from __future__ import annotations

import torch

from models.optim import LazyRowAdam


def test_dense_parameters_step_exactly_as_adam_does():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours, reference = LazyRowAdam([a], lr=1e-2), torch.optim.Adam([b], lr=1e-2)
    for _ in range(20):
        target = torch.randn(5, 3)
        for p, opt in ((a, ours), (b, reference)):
            opt.zero_grad()
            ((p - target) ** 2).sum().backward()
            opt.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_a_table_row_and_its_moments_stay_put_while_no_update_touches_it():
    torch.manual_seed(0)
    table = torch.nn.Embedding(8, 4)
    reference = torch.nn.Embedding(8, 4)
    reference.load_state_dict(table.state_dict())
    ours = LazyRowAdam([table.weight], lr=1e-2, lazy=True)
    adam = torch.optim.Adam([reference.weight], lr=1e-2)
    for step in range(30):
        rows = torch.tensor([1, 2]) if step < 10 else torch.tensor([2])    # row 1 leaves after 10 steps
        for emb, opt in ((table, ours), (reference, adam)):
            opt.zero_grad()
            (emb(rows) ** 2).sum().backward()
            opt.step()
        if step == 9:
            frozen = table.weight[1].detach().clone()
    assert torch.equal(table.weight[1], frozen)                          # ours: still where it was left
    assert not torch.allclose(reference.weight[1], frozen, atol=1e-6)     # Adam's momentum kept moving it
    assert torch.allclose(table.weight[2], reference.weight[2], atol=1e-6)  # rows used every step: same as Adam
    assert torch.equal(table.weight[0], reference.weight[0])             # never used: untouched by both


def test_an_adam_checkpoint_loads_and_keeps_training():
    torch.manual_seed(0)
    table, dense = torch.nn.Embedding(6, 2), torch.nn.Linear(2, 1)
    adam = torch.optim.Adam([{"params": [table.weight]}, {"params": list(dense.parameters())}], lr=1e-2)
    (dense(table(torch.tensor([0, 3]))) ** 2).sum().backward()
    adam.step()
    ours = LazyRowAdam([{"params": [table.weight], "lazy": True}, {"params": list(dense.parameters())}], lr=1e-2)
    ours.load_state_dict(adam.state_dict())
    assert [g["lazy"] for g in ours.param_groups] == [True, False]
    assert ours.state[table.weight]["step"].tolist() == [1.0] * 6
    ours.zero_grad()
    (dense(table(torch.tensor([3]))) ** 2).sum().backward()
    before = table.weight.detach().clone()
    ours.step()
    assert torch.equal(table.weight[0], before[0]) and not torch.equal(table.weight[3], before[3])
