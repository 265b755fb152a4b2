"""Policy decision benchmark: keyturn vs cedarpy on an equivalent 1,000-rule policy, plus CEL engines.

    .venv/bin/python benchmarks/policy_bench.py [--decisions N] [--out benchmarks/results/policy.md]

1. Generates a 1,000-rule keyturn policy (exact, prefix-glob, suffix-glob, resource-glob deny and CEL
   `when` rules) and the equivalent Cedar policy set. Cedar has no "review": review rules become
   `permit` policies with a `review-` id and the decision is derived from the determining policies, so
   both engines answer the same three-way question; the run checks they agree on every request.
2. Measures keyturn's in-process `CompiledPolicy.evaluate` and cedarpy in its fastest modes (policies and
   entities parsed once into handles; one call per request for latency, `is_authorized_batch` for
   throughput). keyturn is measured warm (memoised per action) and cold (every action seen first time).
   keyturn evaluates only the rules its per-action index selects; Cedar is given the same index
   (`CedarActionIndex`: the policies whose action scope or `context.action like` pattern can match the
   action, parsed once into a PolicySet per action and cached), and the headline ratio is against that.
   The whole 1,000-policy set on every call is shown too, as what cedarpy does out of the box.
3. Measures the two CEL implementations on a typical `when` (`common-expression-language` vs `cel-python`).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from keyturn.model import ActionRequest, Decision, Principal, PrincipalKind
from keyturn.policy import CompiledPolicy, load_policy

NOW = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)
RULES = 1000
CHECKED = 1000  # requests on which both engines must agree
CEDAR_CALLS = 2000  # cedarpy is ~1 ms per call here: enough samples for a p99 within the time budget
CEDAR_INDEXED_CALLS = 20000  # sliced per action it is ~10-30 µs a call


CedarPolicies = list[tuple[str, str]]  # (the action or `*` glob a policy can apply to, its text)


def generate(rules: int = RULES) -> tuple[dict[str, Any], CedarPolicies]:
    """The keyturn policy (as data) and the Cedar policies, rule for rule, each with its action pattern."""
    keyturn_rules: list[dict[str, Any]] = []
    cedar: CedarPolicies = []
    per_kind = rules // 5
    for i in range(per_kind):  # exact action, allow
        keyturn_rules.append({"name": f"read {i}", "match": {"action": f"svc{i}.read"}, "decision": "allow"})
        cedar.append(
            (
                f"svc{i}.read",
                f'@id("allow-read-{i}")\npermit(principal, action == Action::"svc{i}.read", resource);',
            )
        )
    for i in range(per_kind):  # prefix glob, review
        keyturn_rules.append(
            {
                "name": f"admin {i}",
                "match": {"action": f"svc{i}.admin.*"},
                "decision": "review",
                "approvers": ["sre"],
            }
        )
        cedar.append(
            (
                f"svc{i}.admin.*",
                f'@id("review-admin-{i}")\npermit(principal, action, resource)'
                f' when {{ context.action like "svc{i}.admin.*" }};',
            )
        )
    for i in range(per_kind):  # exact action + resource glob, deny
        keyturn_rules.append(
            {
                "name": f"delete {i}",
                "match": {"action": f"svc{i}.delete", "resource": "prod/*"},
                "decision": "deny",
                "reason": "no prod deletes",
            }
        )
        cedar.append(
            (
                f"svc{i}.delete",
                f'@id("deny-delete-{i}")\nforbid(principal, action == Action::"svc{i}.delete", resource)'
                ' when { context.resource like "prod/*" };',
            )
        )
    for i in range(per_kind):  # exact action + CEL condition, review
        keyturn_rules.append(
            {
                "name": f"export {i}",
                "match": {"action": f"svc{i}.export"},
                "when": "params.rows > 1000",
                "decision": "review",
                "approvers": ["data"],
            }
        )
        cedar.append(
            (
                f"svc{i}.export",
                f'@id("review-export-{i}")\npermit(principal, action == Action::"svc{i}.export", resource)'
                " when { context.params.rows > 1000 };",
            )
        )
    for i in range(rules - 4 * per_kind):  # suffix glob, allow
        keyturn_rules.append({"name": f"op {i}", "match": {"action": f"*.op{i}"}, "decision": "allow"})
        cedar.append(
            (
                f"*.op{i}",
                f'@id("allow-op-{i}")\npermit(principal, action, resource)'
                f' when {{ context.action like "*.op{i}" }};',
            )
        )
    policy = {"defaults": {"decision": "review", "approvers": ["security"]}, "rules": keyturn_rules}
    return policy, cedar


class CedarActionIndex:
    """Cedar given what keyturn's compiled policy has: an index from action to the policies that can apply.

    A policy whose scope names one action, or whose condition is `context.action like "glob"`, can only
    apply to actions that pattern matches; every other policy is dropped from that action's slice, which
    cannot change a decision. Each action's slice is parsed into a PolicySet the first time the action is
    seen and cached, as keyturn memoises its candidate rules per action.
    """

    def __init__(self, policies: CedarPolicies) -> None:
        self._patterns = [
            (re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$"), text)
            for pattern, text in policies
        ]
        self._sets: dict[str, Any] = {}

    def policy_set(self, action: str) -> Any:
        found = self._sets.get(action)
        if found is None:
            import cedarpy

            text = "\n".join(text for pattern, text in self._patterns if pattern.match(action))
            found = self._sets[action] = cedarpy.PolicySet.from_str(text)
        return found


def requests(count: int, seed: int = 7) -> list[ActionRequest]:
    rng = random.Random(seed)
    agent = Principal(id="agent:bench", kind=PrincipalKind.AGENT, groups=frozenset({"bots"}))
    out = []
    n = RULES // 5
    for _ in range(count):
        i = rng.randrange(n)
        action = rng.choice(
            [
                f"svc{i}.read",
                f"svc{i}.admin.rotate",
                f"svc{i}.delete",
                f"svc{i}.export",
                f"svc{i}.op{i}",
                f"other{i}.unknown",
            ]
        )
        out.append(
            ActionRequest(
                action=action,
                resource=rng.choice(["prod/db", "dev/db"]),
                params={"rows": rng.choice([10, 5000])},
                requester=agent,
            )
        )
    return out


def cedar_request(request: ActionRequest) -> dict[str, Any]:
    return {
        "principal": {"type": "Agent", "id": request.requester.id},
        "action": {"type": "Action", "id": request.action},
        "resource": {"type": "Resource", "id": request.resource},
        "context": {"action": request.action, "resource": request.resource, "params": request.params},
    }


def cedar_decision(result: Any) -> Decision:
    reasons = result.diagnostics.reasons
    if not result.allowed:
        return Decision.DENY if reasons else Decision.REVIEW  # nothing permitted and nothing forbade: default
    ids = result.diagnostics.id_annotations_by_reason  # policyN -> our @id annotation
    return Decision.REVIEW if any(ids.get(r, "").startswith("review-") for r in reasons) else Decision.ALLOW


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    return ordered[len(ordered) // 2] / 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000


def time_each(call: Callable[[Any], Any], items: list[Any]) -> tuple[list[int], float]:
    samples = []
    started = time.perf_counter()
    for item in items:
        t0 = time.perf_counter_ns()
        call(item)
        samples.append(time.perf_counter_ns() - t0)
    return samples, time.perf_counter() - started


def bench_cel(iterations: int) -> dict[str, float]:
    import cel
    import celpy

    source = "params.rows > 1000 || 'pii' in params.tags"
    activation = {"params": {"rows": 5000, "tags": ["a"]}}
    program = cel.compile(source)
    env = celpy.Environment()
    celpy_program = env.program(env.compile(source))
    results = {}
    for name, run in (
        ("common-expression-language (cel)", lambda: program.execute(activation)),
        (
            "cel-python (celpy)",
            lambda: celpy_program.evaluate({"params": celpy.json_to_cel(activation["params"])}),
        ),
    ):
        count = iterations if "celpy" not in name else max(200, iterations // 20)
        run()
        t0 = time.perf_counter()
        for _ in range(count):
            run()
        results[name] = (time.perf_counter() - t0) / count * 1e6
    return results


def machine() -> str:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?"
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    system = f"{platform.system()} {platform.release()}"
    return f"{model}, nproc {nproc}, Python {platform.python_version()}, {system}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "policy.md")
    args = parser.parse_args()

    import cedarpy

    policy_data, cedar_policies = generate()
    cedar_text = "\n".join(text for _, text in cedar_policies)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-policy.yaml"
        path.write_text(yaml.safe_dump(policy_data, sort_keys=False))
        t0 = time.perf_counter()
        policy: CompiledPolicy = load_policy([path])
        load_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    policy_set = cedarpy.PolicySet.from_str(cedar_text)
    cedar_parse_ms = (time.perf_counter() - t0) * 1000
    entities = cedarpy.Entities.from_json_str("[]")
    sample = requests(args.decisions)
    cedar_sample = [cedar_request(r) for r in sample]

    # equivalence: both engines give the same decision on every request, Cedar whole and indexed
    cedar_results = cedarpy.is_authorized_batch(cedar_sample[:CHECKED], policy_set, entities)
    check_index = CedarActionIndex(cedar_policies)
    for request, cedar_input, result in zip(
        sample[:CHECKED], cedar_sample[:CHECKED], cedar_results, strict=True
    ):
        ours = policy.evaluate(request, NOW).decision
        theirs = cedar_decision(result)
        sliced = cedarpy.is_authorized(cedar_input, check_index.policy_set(request.action), entities)
        assert ours is theirs is cedar_decision(sliced), (request.action, request.resource, request.params)
    mix = statistics.multimode([policy.evaluate(r, NOW).decision.value for r in sample[:CHECKED]])

    # keyturn, cold: every action evaluated for the first time (no memo) on a freshly loaded policy
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-policy.yaml"
        path.write_text(yaml.safe_dump(policy_data, sort_keys=False))
        cold_policy = load_policy([path])
    seen: set[str] = set()
    first_time = [r for r in sample if not (r.action in seen or seen.add(r.action))]
    cold_ns, _ = time_each(lambda r: cold_policy.evaluate(r, NOW), first_time)

    # keyturn, warm
    for r in sample[:2000]:
        policy.evaluate(r, NOW)
    warm_ns, warm_total = time_each(lambda r: policy.evaluate(r, NOW), sample)

    # cedarpy: one call per request (latency), and batched (throughput)
    cedarpy.is_authorized(cedar_sample[0], policy_set, entities)
    cedar_count = min(len(cedar_sample), CEDAR_CALLS)
    cedar_ns, cedar_total = time_each(
        lambda r: cedarpy.is_authorized(r, policy_set, entities), cedar_sample[:cedar_count]
    )
    t0 = time.perf_counter()
    for start in range(0, cedar_count, 500):
        cedarpy.is_authorized_batch(cedar_sample[start : start + 500], policy_set, entities)
    cedar_batch_total = time.perf_counter() - t0

    # cedarpy with keyturn's index: cold (each action's slice parsed on first sight), then warm
    index = CedarActionIndex(cedar_policies)
    cold_cedar_ns, _ = time_each(
        lambda r: cedarpy.is_authorized(r, index.policy_set(r["action"]["id"]), entities),
        [cedar_request(r) for r in first_time],
    )
    indexed_count = min(len(cedar_sample), CEDAR_INDEXED_CALLS)
    for r in cedar_sample[:indexed_count]:
        index.policy_set(r["action"]["id"])
    indexed_ns, indexed_total = time_each(
        lambda r: cedarpy.is_authorized(r, index.policy_set(r["action"]["id"]), entities),
        cedar_sample[:indexed_count],
    )

    cel_numbers = bench_cel(20000)

    kt_rate = len(sample) / warm_total
    cedar_rate = cedar_count / cedar_total
    cedar_batch_rate = cedar_count / cedar_batch_total
    warm_p50, warm_p99 = percentiles(warm_ns)
    cold_p50, cold_p99 = percentiles(cold_ns)
    cedar_p50, cedar_p99 = percentiles(cedar_ns)
    indexed_rate = indexed_count / indexed_total
    indexed_p50, indexed_p99 = percentiles(indexed_ns)
    cold_cedar_p50, cold_cedar_p99 = percentiles(cold_cedar_ns)
    ratio = kt_rate / indexed_rate
    unindexed_ratio = kt_rate / max(cedar_rate, cedar_batch_rate)
    cedar_version = cedarpy_version()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    verdict = "met" if warm_p99 <= 50 and ratio >= 1.0 else "NOT met"

    lines = [
        "# Policy decision benchmark",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- load average at the end of the run (1/5/15 min): {load}"
        " — the machine is shared; latency tails grow with its load",
        f"- command: `.venv/bin/python benchmarks/policy_bench.py --decisions {args.decisions}`",
        f"- policy: {len(policy.rules)} rules (200 exact allow, 200 prefix-glob review,"
        " 200 exact+resource-glob deny, 200 exact+CEL review, 200 suffix-glob allow); the Cedar set is"
        f" rule-for-rule equivalent and both engines gave the same decision on all {CHECKED:,} checked"
        " requests",
        f"- request mix: 6 shapes incl. unknown actions (most common verdict: {', '.join(mix)})",
        f"- load: keyturn {load_ms:.0f} ms (YAML, validation, 200 CEL compiles, index);"
        f" cedarpy parse {cedar_parse_ms:.0f} ms",
        "",
        "| engine | mode | decisions/s | p50 µs | p99 µs |",
        "|---|---|---:|---:|---:|",
        f"| keyturn | in-process `evaluate`, warm | {kt_rate:,.0f} | {warm_p50:.1f} | {warm_p99:.1f} |",
        f"| keyturn | first evaluation of each action (cold memo), n={len(cold_ns)} | - |"
        f" {cold_p50:.1f} | {cold_p99:.1f} |",
        f"| cedarpy {cedar_version} | `is_authorized`, PolicySet + Entities handles | {cedar_rate:,.0f} |"
        f" {cedar_p50:.1f} | {cedar_p99:.1f} |",
        f"| cedarpy {cedar_version} | `is_authorized_batch` (500/call) | {cedar_batch_rate:,.0f} | - | - |",
        f"| cedarpy {cedar_version} | `is_authorized`, PolicySet sliced per action (keyturn's index), warm |"
        f" {indexed_rate:,.0f} | {indexed_p50:.1f} | {indexed_p99:.1f} |",
        f"| cedarpy {cedar_version} | the same, first call of each action (slice parsed),"
        f" n={len(cold_cedar_ns)} | - | {cold_cedar_p50:.1f} | {cold_cedar_p99:.1f} |",
        "",
        f"**keyturn / cedarpy given the same per-action index = {ratio:.1f}x** (p50 {warm_p50:.1f} vs"
        f" {indexed_p50:.1f} µs); goal >= 1.0x and p99 <= 50 µs: {verdict}.",
        f"Against the whole 1,000-policy set on every call (cedarpy out of the box, best mode):"
        f" {unindexed_ratio:.1f}x — that gap is the index, not the engine, and is not a fair comparison.",
        "",
        "## CEL engines (one `when`, `params.rows > 1000 || 'pii' in params.tags`)",
        "",
        "| implementation | µs per evaluation |",
        "|---|---:|",
        *[f"| {name} | {value:.2f} |" for name, value in cel_numbers.items()],
        "",
        "keyturn uses `common-expression-language`. Caveat: its `matches()` compiles the regex on every call"
        " (0.1-0.5 ms), so guard regexes with a cheap `contains`/`startsWith` test.",
        "",
    ]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def cedarpy_version() -> str:
    from importlib.metadata import version

    return version("cedarpy")


if __name__ == "__main__":
    sys.exit(main())
