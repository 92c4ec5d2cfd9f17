"""Learner update throughput (samples/s) and serve-time adapt() latency, default model.

    python -m bench.learner_throughput [--seconds S] [--batch B] [--device auto|cpu|cuda] [--json]

Samples are logged decisions per second through ``Learner.update`` (off-policy
objective + anti-forgetting penalties), alone and with a meta step on 64 user tasks.
Item text embeddings are random unit vectors of the MiniLM width: the cost does not
depend on their values. adapt() is timed per call for k=3 steps on 20 experiences, in
the scorer's numpy path (ServeAdapter) and in torch.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from bench.machine import result
from bench.runner import run_benchmark
from bench.synthetic_batches import synthetic_batch, synthetic_tasks
from models.learner import Learner, LearnerConfig, throughput
from models.meta import ServeAdapter, adapt_user
from models.policy import PolicyConfig, TwoTowerPolicy


def adapt_latency(calls: int = 2000) -> dict[str, float]:
    """Per-call latency of serve-time adaptation (the posterior of a user's head from 20 outcomes): the
    scorer's numpy path and the torch one."""
    model = TwoTowerPolicy(PolicyConfig()).eval()
    d = model.config.dim
    user, items = torch.randn(d), torch.randn(20, d)
    bias, positions, rewards = torch.randn(20), torch.randint(0, 5, (20,)), torch.rand(20)
    adapter = ServeAdapter(model)
    np_args = (user.numpy(), items.numpy(), bias.numpy(), positions.numpy(), rewards.numpy())

    def timed(call) -> np.ndarray:
        timings = []
        for i in range(calls + 200):
            started = time.perf_counter()
            call()
            if i >= 200:
                timings.append(time.perf_counter() - started)
        return np.array(timings) * 1000

    with torch.inference_mode():
        torch_ms = timed(lambda: adapt_user(model, user, items, bias, positions, rewards))
    numpy_ms = timed(lambda: adapter.posterior(*np_args))
    return {"adapt_n20_p50_ms": round(float(np.percentile(numpy_ms, 50)), 4),
            "adapt_n20_p99_ms": round(float(np.percentile(numpy_ms, 99)), 4),
            "adapt_torch_n20_p50_ms": round(float(np.percentile(torch_ms, 50)), 4),
            "adapt_torch_n20_p99_ms": round(float(np.percentile(torch_ms, 99)), 4)}


def measure(seconds: float = 5.0, batch_size: int = 512, device: str = "auto", progress=None) -> dict:
    gen = torch.Generator().manual_seed(0)
    config = PolicyConfig()
    learner_config = LearnerConfig(device=device, ewc_strength=1000.0, distill_strength=1.0)
    batch = synthetic_batch(config, batch_size, 20, 2000, gen)
    tasks = synthetic_tasks(config, 64, 25, 20, 2000, gen)
    learner = Learner(config, learner_config)
    if progress:
        progress("off-policy update")
    plain = throughput(learner, batch, None, seconds)
    if progress:
        progress("off-policy + meta update")
    with_meta = throughput(learner, batch, tasks, seconds)
    if progress:
        progress("adapt() latency")
    latency = adapt_latency()
    params = sum(p.numel() for p in learner.model.parameters())
    return result(
        "learner_throughput",
        {
            "samples_per_second": round(plain["samples_per_second"], 1),
            "updates_per_second": round(plain["steps_per_second"], 2),
            # Counts the tasks' experiences too; decisions_per_second_with_meta compares with the plain figure.
            "samples_per_second_with_meta": round(with_meta["samples_per_second"], 1),
            "decisions_per_second_with_meta": round(with_meta["steps_per_second"] * batch_size, 1),
            "updates_per_second_with_meta": round(with_meta["steps_per_second"], 2),
            **latency,
        },
        {"batch": batch_size, "candidates": 20, "meta_tasks": 64, "task_experiences": 64 * 45,
         "device": plain["device"], "model_parameters": params, "torch_threads": torch.get_num_threads(),
         "regularisers": "ewc+distillation", "seconds_per_measurement": seconds},
    )


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--seconds", type=float, default=5.0)
        parser.add_argument("--batch", type=int, default=512)
        parser.add_argument("--device", default="auto")

    def run(args, say):
        return measure(args.seconds, args.batch, args.device,
                       progress=(lambda what: say(f"measuring {what} ...")) if say else None)

    def summary(out):
        m, batch = out["metrics"], out["params"]["batch"]
        return (f"{m['samples_per_second']:,.0f} samples/s ({m['updates_per_second']} updates/s of {batch}) on "
                f"{out['params']['device']}; with meta step {m['samples_per_second_with_meta']:,.0f} samples/s; "
                f"adapt() p50 {m['adapt_n20_p50_ms']} ms, p99 {m['adapt_n20_p99_ms']} ms")

    return run_benchmark(__doc__, configure, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
