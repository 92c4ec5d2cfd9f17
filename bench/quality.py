"""Learning quality side by side: random, popularity, Vowpal Wabbit, ours and its ablations, the oracle.

    recsys-stream bench quality [--json OUT.json] [--plot OUT.png] [--seeds 3] [--requests N] [--scenario away]
    python -m bench.quality ...   (the same)

A closed loop on ``sim/`` (no broker): per seed one stream is recorded (users,
candidates, the dice; ``bench/quality_stream.py``) and every policy plays it, each
learning online from only its own feedback, one round of requests at a time. The
stream has a drift (``--scenario drift``: segment 0's tastes shift, then return;
``--scenario away``: segment 0 is away while everyone else's tastes move, then it
comes back unchanged), new users arriving throughout, and new items released throughout. One item is shown per request
(the top slot), which is the decision ``--cb_explore_adf`` makes.

Reported per policy, mean and standard deviation over seeds: cumulative reward,
CTR per phase, regret against the oracle (in expected reward, so the dice do not
count), reward over new users' first 5/10/20 requests (cold start), reward on the
returning segment after the drift relative to before it (both as a share of the
oracle's, so a policy that merely faces easier requests gains nothing), and
decisions per second (choose + learn).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.agents import (
    OracleAgent,
    OursAgent,
    PopularityAgent,
    RandomAgent,
    VowpalAgent,
)
from bench.machine import result
from bench.quality_stream import Stream, StreamConfig, record_stream
from models.agent import VARIANTS, AgentConfig

POLICIES = ("random", "popularity", "vw_squarecb", "vw_epsilon", "ours", "ours_no_meta", "ours_no_anti_forgetting",
            "oracle")
#: Also playable by name (``--policies``), not run by default.
OPTIONAL_POLICIES = ("ours_online_only", "ours_retained", "ours_no_item_evidence", "ours_changepoint")
PHASES = ("before", "drift", "after")
COLD_START = (5, 10, 20)


#: Seeds the defaults were tuned on; never reported (see BENCHMARKS.md).
TUNING_SEEDS = (0, 100, 200, 300, 400, 500, 600, 700)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``3`` (seeds 1..3), ``41,42,43`` or ``41-50``; every seed must be >= 0 and distinct."""
    text = str(text).strip()
    try:
        if "," in text:
            seeds = tuple(int(part) for part in text.split(",") if part.strip())
        elif "-" in text.strip("-"):
            low, high = (int(part) for part in text.split("-", 1))
            if high < low:
                raise ValueError
            seeds = tuple(range(low, high + 1))
        else:
            count = int(text)
            if count < 1:
                raise ValueError
            seeds = tuple(range(1, count + 1))
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give a count (3), a list (41,42,43) or a range (41-50)") from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: seeds must be distinct and >= 0")
    tuned = sorted(set(seeds) & set(TUNING_SEEDS))
    if tuned:
        print(f"warning: seeds {tuned} were used to tune the defaults; do not report them", file=sys.stderr)
    return seeds


def parse_drift(text: str) -> tuple[float, float]:
    try:
        start, end = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--drift {text!r}: give START,END as shares of the stream, e.g. 0.2,0.7") from None
    return start, end


@dataclass(frozen=True)
class QualityConfig:
    stream: StreamConfig = StreamConfig()
    seeds: tuple[int, ...] = (1, 2, 3)
    policies: tuple[str, ...] = POLICIES
    #: Share of the phase next to the drift's edges that forgetting compares (segment 0 only).
    forgetting_window: float = 0.5


def encode_items(stream: Stream) -> np.ndarray:
    """MiniLM text embeddings of the catalogue (the packaged model; no download)."""
    from models.encoders import TextEncoder, item_text

    cat = stream.world.catalog
    return TextEncoder().encode([item_text(t, d, c) for t, d, c in zip(cat.titles, cat.descriptions,
                                                                       cat.categories)])


def make_agent(name: str, stream: Stream, seed: int, text: np.ndarray):
    if name in VARIANTS:
        return OursAgent(stream, seed, text, VARIANTS[name])
    if name == "ours_no_item_evidence":       # the scorer's --no-item-evidence
        return OursAgent(stream, seed, text, VARIANTS["ours"], item_evidence=False, name=name)
    if name.startswith("vw_"):
        try:
            import vowpalwabbit  # noqa: F401
        except ImportError:
            raise ImportError("Vowpal Wabbit is not installed: pip install 'recsys-stream[bench]' (or vowpalwabbit), "
                              "or leave the vw_* policies out with --policies") from None
        return VowpalAgent(stream, seed, text, "squarecb" if name == "vw_squarecb" else "epsilon 0.05")
    return {"random": RandomAgent, "popularity": PopularityAgent, "oracle": OracleAgent}[name](stream, seed)


def play(agent, stream: Stream, progress: Callable[[str], None] | None = None) -> dict[str, np.ndarray | float]:
    n = len(stream)
    reward, click, expected = np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, np.float32)
    started, last_report = time.perf_counter(), time.monotonic()
    for rows in stream.rounds():
        choice, propensity = agent.choose(stream, rows)
        r, c, e = stream.outcome(rows, choice)
        agent.learn(stream, rows, choice, propensity, r)
        reward[rows], click[rows], expected[rows] = r, c, e
        if progress is not None and time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            progress(f"    {agent.name}: {rows.stop:,}/{n:,} requests")
    seconds = time.perf_counter() - started
    if hasattr(agent, "close"):
        agent.close()
    return {"reward": reward, "click": click, "expected": expected, "seconds": seconds}


def score(stream: Stream, run: dict, oracle: np.ndarray, window: float) -> dict[str, float]:
    """The per-policy figures of one seed (see the module docstring)."""
    phase = stream.phase()
    out: dict[str, float] = {
        "cumulative_reward": float(run["reward"].sum()),
        "mean_expected_reward": float(run["expected"].mean()),
        "regret_vs_oracle": float((oracle - run["expected"]).sum()),
        "decisions_per_second": len(stream) / run["seconds"],
    }
    for i, name in enumerate(PHASES):
        out[f"ctr_{name}"] = float(run["click"][phase == i].mean())
    new = stream.world.users.arrival_step[stream.users] > 0
    for n in COLD_START:
        rows = new & (stream.nth < n)
        out[f"cold_start_reward_first_{n}"] = float(run["expected"][rows].mean()) if rows.any() else float("nan")
        out[f"cold_start_share_of_oracle_first_{n}"] = float(run["expected"][rows].sum() / oracle[rows].sum()) \
            if rows.any() else float("nan")
    # Forgetting: the returning segment just after its tastes came back vs just before they left.
    start, end = (int(stream.config.requests * f) for f in stream.config.drift)
    seg = stream.world.users.segment[stream.users] == stream.config.drift_segment
    span = int(window * min(start, stream.config.requests - end))
    before = seg & (stream.step >= start - span) & (stream.step < start)
    after = seg & (stream.step >= end) & (stream.step < end + span)
    share_before = run["expected"][before].sum() / oracle[before].sum()
    share_after = run["expected"][after].sum() / oracle[after].sum()
    out["returning_segment_share_of_oracle_before"] = float(share_before)
    out["returning_segment_share_of_oracle_after"] = float(share_after)
    out["returning_segment_relative"] = float(share_after / share_before)
    return out


def reward_curve(stream: Stream, run: dict, oracle: np.ndarray, points: int = 100) -> list[float]:
    """Expected reward as a share of the oracle's, in ``points`` equal windows of the stream."""
    chunks = np.array_split(np.arange(len(stream)), points)
    return [float(run["expected"][c].sum() / oracle[c].sum()) for c in chunks]


def run_quality(config: QualityConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda line: None)
    unknown = set(config.policies) - set(POLICIES + OPTIONAL_POLICIES)
    if unknown:
        raise ValueError(f"unknown policies {sorted(unknown)}; choose from {', '.join(POLICIES + OPTIONAL_POLICIES)}")
    per_seed: dict[str, list[dict[str, float]]] = {p: [] for p in config.policies}
    curves: dict[str, list[list[float]]] = {p: [] for p in config.policies}
    for i, seed in enumerate(config.seeds, 1):
        say(f"seed {seed} ({i}/{len(config.seeds)}): recording a stream of {config.stream.requests:,} requests")
        stream = record_stream(config.stream, seed)
        text = encode_items(stream)
        oracle = stream.expected.max(axis=1)
        for name in config.policies:
            agent = make_agent(name, stream, seed, text)
            run = play(agent, stream, progress)
            per_seed[name].append(score(stream, run, oracle, config.forgetting_window))
            curves[name].append(reward_curve(stream, run, oracle))
            m = per_seed[name][-1]
            say(f"  {name:<24} reward {m['cumulative_reward']:>9,.0f}  share of oracle "
                f"{m['mean_expected_reward'] / oracle.mean():.3f}  cold start (first 5) "
                f"{m['cold_start_reward_first_5']:.3f}  returning {m['returning_segment_relative']:.3f}  "
                f"{m['decisions_per_second']:,.0f} decisions/s")
    params = {"stream": asdict(config.stream), "seeds": len(config.seeds), "policies": list(config.policies),
              "slots_per_request": 1, "seeds_used": list(config.seeds), "tuning_seeds": list(TUNING_SEEDS),
              "ours": {"agent": asdict(AgentConfig()),
                       "served": "ServingPolicy.decide; each round's outcomes through the learning loop "
                                 "(models/loop.py), a gated version per round"},
              "vw": {"vw_squarecb": "--cb_explore_adf --squarecb -q UA", "vw_epsilon": "--cb_explore_adf "
                     "--epsilon 0.05 -q UA", "features": "shared: user features + user id; action: item id + "
                     "MiniLM text embedding (384 floats)"},
              "learning": "per round: choose for every request, then learn from the round's feedback"}
    return quality_report(per_seed, {name: np.mean(c, axis=0).round(4).tolist() for name, c in curves.items()},
                          params)


def quality_report(per_seed: dict[str, list[dict[str, float]]], curves: dict[str, list[float]],
                   params: dict[str, Any]) -> dict[str, Any]:
    """The report of a run (or of merged runs): every summary is computed from the per-seed rows."""
    return result("quality", {"by_policy": {name: summarise(rows) for name, rows in per_seed.items()},
                              "paired": paired_differences(per_seed), "curves": curves, "per_seed": per_seed}, params)


#: Pairs whose difference the acceptance criteria read (first minus second), and the metrics compared.
PAIRS = (("ours", "vw_squarecb"), ("ours", "ours_no_meta"), ("ours", "ours_no_anti_forgetting"),
         ("ours", "ours_online_only"), ("ours_no_meta", "vw_squarecb"), ("ours_retained", "ours"),
         ("ours_retained", "ours_online_only"), ("ours", "ours_no_item_evidence"), ("ours_changepoint", "ours"),
         ("ours_changepoint", "ours_online_only"), ("ours_changepoint", "vw_squarecb"))
PAIRED_METRICS = ("cumulative_reward", "cold_start_reward_first_5", "cold_start_reward_first_10",
                  "returning_segment_relative", "returning_segment_share_of_oracle_after")


def paired_differences(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per pair and metric: mean of the per-seed differences, its standard error, and how many SEs from 0.
    Every policy plays the same stream per seed, so the difference cancels what the seeds share."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for a, b in PAIRS:
        if a not in per_seed or b not in per_seed:
            continue
        pair = out[f"{a} - {b}"] = {}
        for key in PAIRED_METRICS:
            diff = np.array([x[key] - y[key] for x, y in zip(per_seed[a], per_seed[b])], dtype=np.float64)
            diff = diff[np.isfinite(diff)]
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
            mean = float(diff.mean()) if len(diff) else float("nan")
            pair[key] = {"mean": mean, "se": se, "z": mean / se if se and se > 0 else float("nan"),
                         "wins": int((diff > 0).sum()), "seeds": int(len(diff))}
    return out


def paired_table(report: dict[str, Any]) -> str:
    def cell(m: dict[str, float]) -> str:
        return f"{m['mean']:.4g} ±{m['se']:.2g} z{m['z']:.1f} {m['wins']}/{m['seeds']}"

    lines = [f"{'paired difference':<36}" + "".join(f"{k:>36}" for k in PAIRED_METRICS[:4])]
    for pair, metrics in report["metrics"].get("paired", {}).items():
        lines.append(f"{pair:<36}" + "".join(f"{cell(metrics[k]):>36}" for k in PAIRED_METRICS[:4]))
    return "\n".join(lines)


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from runs on disjoint seeds with the same stream and policies (seeds run in parallel
    processes): per-seed rows are joined and every summary recomputed from them."""
    first = reports[0]
    for other in reports[1:]:
        if other["params"]["stream"] != first["params"]["stream"] or other["params"]["policies"] != first["params"]["policies"]:
            raise ValueError("only reports of the same stream settings and policies can be merged")
    seeds = [s for r in reports for s in r["params"]["seeds_used"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the reports share seeds: {sorted(seeds)}")
    per_seed = {p: [row for r in reports for row in r["metrics"]["per_seed"][p]] for p in first["metrics"]["per_seed"]}
    weights = np.array([len(r["params"]["seeds_used"]) for r in reports], dtype=np.float64)
    curves = {p: np.average([r["metrics"]["curves"][p] for r in reports], axis=0, weights=weights).round(4).tolist()
              for p in first["metrics"]["curves"]}
    return quality_report(per_seed, curves, {**first["params"], "seeds": len(seeds), "seeds_used": seeds})


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: {"mean": float(np.nanmean([r[key] for r in rows])),
                  "std": float(np.nanstd([r[key] for r in rows])) if len(rows) > 1 else 0.0}
            for key in rows[0]}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stream = report["params"]["stream"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [2, 1]})
    by_policy = report["metrics"]["by_policy"]
    for name, curve in report["metrics"]["curves"].items():
        if name == "oracle":
            continue
        x = np.linspace(0, stream["requests"], len(curve))
        left.plot(x, curve, label=name, lw=2.2 if name == "ours" else 1.2)
    left.axvspan(stream["drift"][0] * stream["requests"], stream["drift"][1] * stream["requests"], color="grey",
                 alpha=0.15, label="segment 0 away" if stream.get("scenario") == "away" else "segment 0 drifted")
    left.set_xlabel("requests")
    left.set_ylabel("expected reward / oracle's")
    left.set_title(f"Learning on one stream (mean of {report['params']['seeds']} seeds)")
    left.legend(fontsize=8, loc="lower right")
    names = [n for n in by_policy if n != "oracle"]
    width = 0.25
    for j, n_first in enumerate(COLD_START):
        key = f"cold_start_share_of_oracle_first_{n_first}"
        right.bar(np.arange(len(names)) + (j - 1) * width, [by_policy[n][key]["mean"] for n in names],
                  width, yerr=[by_policy[n][key]["std"] for n in names], label=f"first {n_first}")
    right.set_xticks(np.arange(len(names)), names, rotation=40, ha="right", fontsize=8)
    right.set_ylabel("share of oracle reward")
    right.set_title("New users: first requests")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(report: dict[str, Any]) -> str:
    keys = [("cumulative_reward", "reward", ",.0f"), ("regret_vs_oracle", "regret", ",.0f"),
            ("ctr_before", "CTR before", ".3f"), ("ctr_drift", "during", ".3f"), ("ctr_after", "after", ".3f"),
            ("cold_start_share_of_oracle_first_5", "cold 5", ".2f"),
            ("cold_start_share_of_oracle_first_20", "cold 20", ".2f"),
            ("returning_segment_relative", "returning", ".3f"), ("decisions_per_second", "decisions/s", ",.0f")]
    lines = [f"{'policy':<24}" + "".join(f"{label:>18}" for _, label, _ in keys)]
    for name, m in report["metrics"]["by_policy"].items():
        cells = "".join(f"{format(m[k]['mean'], fmt) + ' ±' + format(m[k]['std'], fmt.lstrip(',')):>18}"
                        for k, _, fmt in keys)
        lines.append(f"{name:<24}{cells}")
    return "\n".join(lines)


def config_from(requests: int | None, seeds: int | str | tuple[int, ...], policies: str | None,
                round_size: int | None, drift: str | tuple[float, float] | None = None,
                scenario: str = "drift") -> QualityConfig:
    stream = StreamConfig(scenario=scenario)
    if requests is not None:
        stream = replace(stream, requests=requests)
    if drift is not None:
        stream = replace(stream, drift=parse_drift(drift) if isinstance(drift, str) else tuple(drift))
    if round_size is not None:
        stream = replace(stream, round_size=round_size)
    chosen = tuple(p.strip() for p in policies.split(",")) if policies else POLICIES
    if "oracle" not in chosen:
        chosen = chosen + ("oracle",)
    seeds = seeds if isinstance(seeds, tuple) else parse_seeds(str(seeds))
    return QualityConfig(stream=stream, seeds=seeds, policies=chosen)


def measure(requests: int | None = None, seeds: int = 3, progress: Callable[[str], None] | None = None) -> dict:
    """The default policies on streams of ``requests`` (StreamConfig's default when None)."""
    return run_quality(config_from(requests, seeds, None, None), progress)


def main(argv: list[str] | None = None) -> int:
    from bench.cli import quality_command

    return quality_command.main(args=argv, prog_name="python -m bench.quality", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
