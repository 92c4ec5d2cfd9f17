"""Learner update throughput against Vowpal Wabbit on identical logged examples, same run, same machine.

    recsys-stream bench learner [--json OUT.json] [--examples N] [--device auto|cpu|cuda]

One recorded stream of the simulated shop (``bench/quality_stream.py``) is logged by a
uniform random policy over 20 candidates: every example is (user, candidates, shown
item, propensity 1/20, reward). Both learners get those examples already in their
input format, built before the clock starts: ours as rows its learning loop
(``models/loop.py``) takes in turns, each update 256 fresh + 256 replayed examples
(the learner worker's mix; their tensors are built inside the clock, as in the worker),
with EWC and distillation on and optionally the meta step on 16 of them; Vowpal Wabbit as
``--cb_explore_adf`` text examples (user features and id shared, item id and the
384-float MiniLM text per action, ``-q UA``), one ``learn`` per example, as VW
learns. Samples per second counts each logged example once (replayed rows count
for ours only as extra work, not as samples).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench.agents import SimRecords, vw_labelled, vw_lines
from bench.machine import result
from bench.quality import encode_items
from bench.quality_stream import StreamConfig, record_stream
from bench.reservoir import Reservoir
from bench.served import ServedVersions
from models.agent import Agent, AgentConfig, Variant
from models.learner import LearnerConfig
from models.loop import ContinualLoop, LoopConfig
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


def time_ours(stream, text, choice, propensity, reward, device: str, meta: bool, batch: int = 256,
              seed: int = 0) -> dict[str, Any]:
    """The learning loop's turns (``models/loop.py``) over the log: updates of 256 fresh rows and 256 replayed
    from a reservoir holding the whole log, EWC and distillation on, and with ``meta`` 16 of each update's
    rows as meta tasks. Building each update's tensors from the rows is inside the clock, as in the worker."""
    rng = np.random.default_rng(seed)
    sim = SimTensors(stream.world, text, PolicyConfig(text_dim=text.shape[1]))
    config = AgentConfig(learner=LearnerConfig(device=device, ewc_strength=100.0, distill_strength=0.5),
                         update_size=batch, max_turn=8 * batch, replay_share=0.5, tasks_per_update=16,
                         publish_every_updates=2**31)
    agent = Agent(sim.config, config, Variant("ours" if meta else "ours_no_meta", meta=meta), seed=seed)
    n = len(stream)
    rows = np.column_stack([stream.users, choice, propensity, reward, np.arange(n), stream.candidates])
    replay: Reservoir[np.ndarray] = Reservoir(50_000, rng)
    replay.add(rows)
    loop: ContinualLoop[np.ndarray] = ContinualLoop(agent, SimRecords(sim, config.history, len(stream.world.users)),
                                                    ServedVersions(), replay, LoopConfig(holdout_share=0.0, seed=seed))
    # A first version, consolidated, so the EWC and distillation penalties are really computed; allocations
    # and autotuning happen here too, outside the clock.
    loop.learn_backlog(rows[:batch])
    waiting = deque(rows)
    if agent.learner.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    while waiting:
        for _ in range(loop.turn(waiting).consumed):
            waiting.popleft()
    if agent.learner.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"samples_per_second": n / seconds, "seconds": seconds, "device": str(agent.learner.device)}


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
            say(f"ours on {dev}{' with the meta step' if meta else ''}: the loop's turns, updates of 256 + 256 replayed")
            ours = time_ours(stream, text, choice, propensity, reward, dev, meta, seed=seed)
            metrics[f"{label}_samples_per_second"] = round(ours["samples_per_second"], 1)
            # The ratio of the figures as reported, so a reader recomputing it from the JSON gets the same.
            metrics[f"{label}_vs_vw"] = round(metrics[f"{label}_samples_per_second"] /
                                              metrics["vw_samples_per_second"], 2)
            say(f"  {ours['samples_per_second']:,.0f} samples/s ({metrics[f'{label}_vs_vw']}x VW)")
    return result("learner_vs_vw", metrics, {
        "examples": examples, "candidates": stream.config.candidates,
        "ours_batch": "the loop's turns: updates of 256 fresh + 256 replayed, tensors built in the clock",
        "ours_regularisers": "ewc 100 + distillation 0.5", "meta_tasks": 16,
        "vw": "--cb_explore_adf --squarecb -q UA, one learn() per example, text examples built before timing",
        "features": "user: 16 features + id; item: id + 384-float MiniLM text",
        "torch_threads": torch.get_num_threads()})
