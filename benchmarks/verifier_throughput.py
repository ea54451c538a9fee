"""Throughput of the sandboxed verifier pool against plain in-process exec, measured side by side in one run.

Usage:
    python benchmarks/verifier_throughput.py [--workers 2] [--rounds 20] [--isolation seccomp|bwrap|none]

Workload: 8 stdlib verifiers (typical AutoIF constraints) x 64 responses of ~200 words = 512 calls per round.
Prints calls/s of the pool and of in-process exec on the same calls, interleaved round by round so all see the
same machine load: AutoIF's way (verifiers exec'd once in this process, each call under signal.alarm) and bare
calls (no timeout at all: the upper bound); the ratios; the p50/p99 latency of the pool's batches (from the
moment a worker starts a batch to its last result); and the cost of the isolation per verifier group: each
verifier runs in a process of its own, which a zygote keeps for that verifier's later batches, so the main rounds
(the same 8 verifiers every round) pay it once, and a last phase with never-seen verifiers pays it every batch.
Target: pool >= 50% of in-process throughput; per-call processes run at ~40 calls/s.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import time

from autoif_train.sandbox import VerifierPool, coerce_result

VERIFIERS = [
    "def evaluate(response):\n    return response == response.lower()\n",
    "def evaluate(response):\n    return len(response.split()) < 250\n",
    "def evaluate(response):\n    return ',' not in response\n",
    "def evaluate(response):\n    return response.lower().count('banana') >= 2\n",
    "def evaluate(response):\n    return response.strip().endswith('Is there anything else I can help with?')\n",
    "import re\n\ndef evaluate(response):\n    return len(re.findall(r'\\[[^\\]]+\\]', response)) >= 2\n",
    "def evaluate(response):\n    paragraphs = [p for p in response.split('\\n\\n') if p.strip()]\n"
    "    return 'true' if len(paragraphs) == 3 else 'false'\n",
    "import string\n\ndef evaluate(response):\n    words = [w.strip(string.punctuation) for w in response.split()]\n"
    "    return sum(w.isupper() for w in words if w) <= 5\n",
]

WORDS = ("the quick brown fox jumps over lazy dog banana river mountain [name] data model answer question simple "
         "clear short long Yes NO maybe, indeed. Paris London verify function response").split()  # fmt: skip


def make_responses(n: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        cut = sorted(rng.sample(range(len(text)), 2))
        out.append(text[: cut[0]] + "\n\n" + text[cut[0] : cut[1]] + "\n\n" + text[cut[1] :])
    return out


def compile_in_process(codes: list[str]) -> dict:
    """evaluate() of each verifier, exec'd in this process (the unsafe AutoIF way: the baseline measured)."""
    fns = {}
    for code in codes:
        namespace: dict = {}
        exec(code, namespace)  # noqa: S102 - trusted benchmark verifiers
        fns[code] = namespace["evaluate"]
    return fns


def autoif_style(fns: dict, calls: list[tuple[str, str]]) -> list:
    """AutoIF's pattern, in-process: a SIGALRM timer around every call (signal.alarm(5) ... signal.alarm(0))."""
    out = []
    for code, response in calls:
        signal.alarm(5)
        try:
            out.append(fns[code](response))
        finally:
            signal.alarm(0)
    return out


def main(workers: int = 2, rounds: int = 20, isolation: str = "seccomp", words: int = 200) -> dict:
    responses = make_responses(64, words)
    calls = [(code, r) for r in responses for code in VERIFIERS]
    fns = compile_in_process(VERIFIERS)
    times = {"pool": 0.0, "autoif": 0.0, "bare": 0.0}
    with VerifierPool(workers=workers, timeout=1.0, isolation=isolation) as pool:
        first = pool.run(calls)  # warm-up: compiles every verifier in every worker
        assert first == [coerce_result(fns[c](r)) for c, r in calls]  # same answers as in-process
        pool.batch_latencies.clear()
        for _ in range(rounds):  # interleaved, so all three see the same machine load
            start = time.perf_counter()
            assert pool.run(calls) == first
            times["pool"] += time.perf_counter() - start
            start = time.perf_counter()
            autoif_style(fns, calls)
            times["autoif"] += time.perf_counter() - start
            start = time.perf_counter()
            [fns[code](response) for code, response in calls]
            times["bare"] += time.perf_counter() - start
        latencies = sorted(pool.batch_latencies)
        # isolation cost: the same work with never-seen verifiers, so every batch needs a new verifier process
        before = dict(pool.stats)
        fresh_rounds = max(1, rounds // 4)
        start = time.perf_counter()
        for i in range(fresh_rounds):
            fresh = {code: f"{code}# round {i}\n" for code in VERIFIERS}
            assert pool.run([(fresh[code], r) for code, r in calls]) == first
        fresh_time = time.perf_counter() - start
        processes = pool.stats["processes"] - before["processes"]
        iso = (pool.stats["isolation_s"] - before["isolation_s"]) / max(1, processes)
    rate = {k: rounds * len(calls) / t for k, t in times.items()}
    rate["fresh"] = fresh_rounds * len(calls) / fresh_time
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    result = dict(rate, ratio=rate["pool"] / rate["autoif"], ratio_bare=rate["pool"] / rate["bare"], p50=p50, p99=p99)
    result.update(ratio_fresh=rate["fresh"] / rate["autoif"], isolation_ms=iso * 1000)
    print(f"workload: {len(VERIFIERS)} verifiers x {len(responses)} responses of ~{words} words = {len(calls)} "
          f"calls/round, {rounds} rounds, {workers} workers, isolation={isolation}, batch size {pool.batch_size}")  # fmt: skip
    print(f"{'pool (sandboxed)':<34}{rate['pool']:>10,.0f} calls/s")
    print(f"{'in-process exec + alarm (AutoIF)':<34}{rate['autoif']:>10,.0f} calls/s   (unsafe)")
    print(f"{'in-process exec, bare calls':<34}{rate['bare']:>10,.0f} calls/s   (unsafe, no timeout at all)")
    print(f"{'ratio pool / exec + alarm':<34}{result['ratio']:>10.1%}   (target >= 50%)")
    print(f"{'ratio pool / bare calls':<34}{result['ratio_bare']:>10.1%}")
    print(f"{'batch latency p50 / p99':<34}{p50 * 1000:>7.2f} ms / {p99 * 1000:.2f} ms ({len(latencies)} batches)")
    print(f"{'isolation per verifier group':<34}{iso * 1000:>7.2f} ms   (new verifier process: fork, set-up, module "
          f"body, kill; {processes} processes)")  # fmt: skip
    print(f"{'pool, every verifier new':<34}{rate['fresh']:>10,.0f} calls/s   ({result['ratio_fresh']:.1%} of exec + "
          "alarm; one new process per verifier group)")  # fmt: skip
    return result


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--isolation", default="seccomp", choices=("seccomp", "bwrap", "none"))
    parser.add_argument("--words", type=int, default=200)
    args = parser.parse_args(argv)
    main(args.workers, args.rounds, args.isolation, args.words)


if __name__ == "__main__":
    cli()
