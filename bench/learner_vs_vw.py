"""Learner update throughput against Vowpal Wabbit on identical logged examples, same run, same machine.

    recsys-stream bench learner [--json OUT.json] [--examples N] [--device auto|cpu|cuda]

One recorded stream of the simulated shop (``bench/quality_stream.py``) is logged by a
uniform random policy over 20 candidates: every example is (user, candidates, shown
item, propensity 1/20, reward). Both learners get those examples already in their
input format, built before the clock starts: ours as ``models.batch.Batch`` tensors
of 256 fresh + 256 replayed examples (the learner worker's mix), with EWC and
distillation on and optionally the meta step on 16 users; Vowpal Wabbit as
``--cb_explore_adf`` text examples (user features and id shared, item id and the
384-float MiniLM text per action, ``-q UA``), one ``learn`` per example, as VW
learns. Samples per second counts each logged example once (replayed rows count
for ours only as extra work, not as samples).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench.agents import vw_labelled, vw_lines
from bench.machine import result
from bench.quality import encode_items
from bench.quality_stream import StreamConfig, record_stream
from models.batch import TaskBatch
from models.learner import Learner, LearnerConfig
from models.policy import PolicyConfig
from sim.logs import SimTensors


def logged_examples(n: int, seed: int = 0):
    stream = record_stream(StreamConfig(requests=n, round_size=min(1000, n), new_users=0, new_items=0), seed)
    rng = np.random.default_rng(seed)
    k = stream.config.candidates
    choice = rng.integers(0, k, size=n)
    reward, _, _ = stream.outcome(slice(0, n), choice)
    return stream, choice, np.full(n, 1.0 / k), reward


def vw_examples(stream, text: np.ndarray, choice, propensity, reward) -> list[list[str]]:
    shared, actions = vw_lines(stream.world, text)
    return [vw_labelled([shared[u]] + [actions[i] for i in cands], a, r, p)
            for u, cands, a, p, r in zip(stream.users, stream.candidates, choice, propensity, reward)]


def time_vw(examples: list[list[str]], seed: int) -> dict[str, float]:
    from vowpalwabbit import Workspace

    vw = Workspace(f"--cb_explore_adf --squarecb -q UA --quiet --random_seed {seed}", enable_logging=False)
    started = time.perf_counter()
    for example in examples:
        vw.learn(example)
    seconds = time.perf_counter() - started
    vw.finish()
    return {"samples_per_second": len(examples) / seconds, "seconds": seconds}


def synthetic_tasks(sim: SimTensors, users: np.ndarray, stream, rng: np.random.Generator) -> TaskBatch:
    """16 users' support (5) and query (3) outcomes from the log, as the worker's tasks."""
    picked = rng.integers(0, len(stream), size=(16, 8))
    items = torch.from_numpy(stream.candidates[picked, 0])
    rewards = torch.from_numpy(rng.random((16, 8)).astype(np.float32) < 0.3).float()
    return sim.task_batch(users, items, torch.zeros_like(items), rewards, 5)


def time_ours(stream, text, choice, propensity, reward, device: str, meta: bool, batch: int = 256,
              seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sim = SimTensors(stream.world, text, PolicyConfig(text_dim=text.shape[1]))
    learner = Learner(sim.config, LearnerConfig(device=device, ewc_strength=100.0, distill_strength=0.5,
                                                meta_weight=1.0 if meta else 0.0))
    n = len(stream)
    zeros = np.zeros(n)
    batches = []
    for start in range(0, n, batch):
        fresh = np.arange(start, min(start + batch, n))
        replayed = rng.integers(0, max(1, start), size=len(fresh)) if start else fresh
        rows = np.concatenate([fresh, replayed])
        b = sim.batch(stream.users[rows], stream.candidates[rows], choice[rows], zeros[rows], propensity[rows],
                      reward[rows])
        r = sim.batch(stream.users[replayed], stream.candidates[replayed], choice[replayed], zeros[replayed],
                      propensity[replayed], reward[replayed])
        tasks = synthetic_tasks(sim, stream.users[rng.integers(0, n, size=16)], stream, rng) if meta else None
        batches.append((b, tasks, r, len(fresh)))
    learner.consolidate([batches[0][0]])       # so the EWC and distillation penalties are really computed
    learner.update(*batches[0][:3])            # warm-up (allocations, autotuning) outside the clock
    if learner.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for b, tasks, r, _ in batches:
        learner.update(b, tasks, r)
    if learner.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"samples_per_second": n / seconds, "seconds": seconds, "device": str(learner.device)}


def measure(examples: int = 20_000, device: str = "auto", seed: int = 0,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda line: None)
    say(f"logging {examples:,} uniform-random decisions from the simulated shop")
    stream, choice, propensity, reward = logged_examples(examples, seed)
    text = encode_items(stream)
    say("Vowpal Wabbit: building text examples, then learning each once")
    vw = time_vw(vw_examples(stream, text, choice, propensity, reward), seed)
    say(f"  {vw['samples_per_second']:,.0f} samples/s")
    metrics: dict[str, Any] = {"vw_samples_per_second": round(vw["samples_per_second"], 1)}
    devices = ["cpu"] + (["cuda"] if device in ("auto", "cuda") and torch.cuda.is_available() else [])
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    for dev in devices if device == "auto" else [device]:
        for meta in (False, True):
            label = f"ours_{dev}" + ("_with_meta" if meta else "")
            say(f"ours on {dev}{' with the meta step' if meta else ''}: one pass in batches of 256 + 256 replayed")
            ours = time_ours(stream, text, choice, propensity, reward, dev, meta, seed=seed)
            metrics[f"{label}_samples_per_second"] = round(ours["samples_per_second"], 1)
            # The ratio of the figures as reported, so a reader recomputing it from the JSON gets the same.
            metrics[f"{label}_vs_vw"] = round(metrics[f"{label}_samples_per_second"] /
                                              metrics["vw_samples_per_second"], 2)
            say(f"  {ours['samples_per_second']:,.0f} samples/s ({metrics[f'{label}_vs_vw']}x VW)")
    return result("learner_vs_vw", metrics, {
        "examples": examples, "candidates": stream.config.candidates, "ours_batch": "256 fresh + 256 replayed",
        "ours_regularisers": "ewc 100 + distillation 0.5", "meta_tasks": 16,
        "vw": "--cb_explore_adf --squarecb -q UA, one learn() per example, text examples built before timing",
        "features": "user: 16 features + id; item: id + 384-float MiniLM text",
        "torch_threads": torch.get_num_threads()})
