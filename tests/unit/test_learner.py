"""The learner step: losses go down, checkpoints round-trip, CUDA when present."""

from __future__ import annotations

import pytest
import torch

from bench.synthetic_batches import synthetic_batch, synthetic_tasks
from models.learner import Learner, LearnerConfig
from models.policy import PolicyConfig

CFG = PolicyConfig(user_features=8, text_dim=16, dim=8, item_buckets=256, user_buckets=256)


def data(gen_seed: int = 0):
    gen = torch.Generator().manual_seed(gen_seed)
    return synthetic_batch(CFG, 128, 10, 50, gen), synthetic_tasks(CFG, 16, 10, 5, 50, gen)


def test_repeated_updates_reduce_the_loss():
    torch.manual_seed(0)
    batch, tasks = data()
    learner = Learner(CFG, LearnerConfig(device="cpu"))
    first = learner.update(batch, tasks)["loss"]
    for _ in range(60):
        last = learner.update(batch, tasks)
    assert last["loss"] < 0.7 * first
    assert {"reward_model_loss", "pg_loss", "meta_query_loss", "grad_norm"} <= set(last)


def test_regularisers_are_active_after_consolidation():
    torch.manual_seed(0)
    batch, _ = data()
    learner = Learner(CFG, LearnerConfig(device="cpu", ewc_strength=10.0, distill_strength=1.0, l2_strength=0.1))
    assert learner.update(batch, replay=batch)["ewc_penalty"] == 0.0
    learner.consolidate([batch])
    for _ in range(5):
        stats = learner.update(batch, replay=batch)
    assert stats["ewc_penalty"] > 0 and stats["distill_penalty"] > 0 and stats["l2_penalty"] > 0


def consolidated_learner() -> tuple[Learner, LearnerConfig, object, object]:
    """A learner one update and one consolidation in (EWC and distillation state to save), and its data."""
    torch.manual_seed(0)
    batch, tasks = data()
    config = LearnerConfig(device="cpu", ewc_strength=10.0, distill_strength=1.0)
    learner = Learner(CFG, config)
    learner.update(batch, tasks)
    learner.consolidate([batch])
    return learner, config, batch, tasks


def test_checkpoint_round_trip_resumes_identically():
    a, config, batch, tasks = consolidated_learner()
    state = a.state_dict()
    b = Learner(CFG, config)
    b.load_state_dict(state)
    sa, sb = a.update(batch, tasks, replay=batch), b.update(batch, tasks, replay=batch)
    assert sa["loss"] == pytest.approx(sb["loss"], rel=1e-6)
    assert b.step == a.step == 2
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_a_checkpoint_of_the_live_tensors_round_trips_through_bytes():
    """The worker checkpoints without a snapshot copy: the bytes must hold the state as it was, and a later
    update must not reach into what was loaded back."""
    from models import checkpoint

    a, config, batch, tasks = consolidated_learner()
    expected = a.state_dict()
    table = a.model.item_id.weight.detach()
    # Views sharing storage, one of them strided: each is written as its own values.
    extra = {"row": table[3], "column": table[:, 1], "whole": table}
    loaded = checkpoint.loads(checkpoint.dumps({"learner": a.state_dict(snapshot=False), "extra": extra}))
    a.update(batch, tasks)
    assert torch.equal(loaded["extra"]["row"], expected["model"]["item_id.weight"][3])
    assert torch.equal(loaded["extra"]["column"], expected["model"]["item_id.weight"][:, 1])
    b = Learner(CFG, config)
    b.load_state_dict(loaded["learner"])
    for name, value in expected["model"].items():
        assert torch.equal(b.model.state_dict()[name], value), name
    assert torch.equal(b.ewc.fisher["item_id.weight"], expected["ewc"]["fisher"]["item_id.weight"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_learner_runs_on_cuda_with_mixed_precision():
    batch, tasks = data()
    learner = Learner(CFG, LearnerConfig(device="cuda"))
    assert learner.amp and next(learner.model.parameters()).is_cuda
    first = learner.update(batch, tasks)["loss"]
    for _ in range(30):
        last = learner.update(batch, tasks)["loss"]
    assert last < first
