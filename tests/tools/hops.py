#!/usr/bin/env python3
"""Where a change's time goes in `make bench` section 1, from the API servers' audit logs.

Run section 1 alone, with the agents' stream client at debug level so their logs carry the time a
snapshot arrived:

    TETHER_BENCH_LOG="info,tether_agent::client=debug" TETHER_BENCH_ONLY=propagation \
        ./target/release/tether-bench
    python3 tests/tools/hops.py target/harness/<pid of that run>

For every central pod write (the benchmark's) and every remote, the first EndpointSlice write that
followed it, by side (Tether's agent or the direct push), p50 / p90 in ms:
  hop     central write's response -> the remote API server received the slice write
  write   the remote API server's time for that write (received -> response)
and for Tether, the hop split at the agent's "snapshot" log line:
  to agent       central response -> the agent has the snapshot (hub and gRPC)
  agent->write   the agent has it -> the remote API server received the write (plan, HTTP)

With the hub's stream at debug level too (TETHER_BENCH_LOG adds `tether_hub::grpc=debug`), the hub's
part: for each central write of a readiness flip or a new pod that the hub sent to all three remotes
within 50 ms, the central response -> the hub's first "sending snapshot" line after it for the
first, second and third remote it sent to, and the hub's line -> the agent's next line for each
remote (matched by time: a flip back brings an earlier version again). Every log the hub wrote counts (`hub.log` and the
`hub.log.N` of its earlier runs).
"""
import bisect, datetime, glob, json, re, sys

run = sys.argv[1]
REMOTES = ["remote-1", "remote-2", "remote-3"]


def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))] if v else float("nan")


def audit(cluster):
    for line in open(f"{run}/{cluster}/audit.log"):
        yield json.loads(line)


central = sorted(
    (ts(v["requestReceivedTimestamp"]), ts(v["stageTimestamp"]), v["verb"])
    for v in audit("central")
    if v.get("objectRef", {}).get("resource") == "pods" and v["user"]["username"] == "tether-harness-admin"
)
starts = [c[0] for c in central]
out = {}
agent_recv = {}  # remote -> when its agent logged each snapshot, in order
for r in REMOTES:
    logs = glob.glob(f"{run}/e2e-*/agent-{r}.log")
    recv = sorted(
        ts(l.split()[0]) for l in (open(logs[0]) if logs else []) if "tether_agent::client: snapshot" in l
    )
    agent_recv[r] = recv
    first = {}
    for v in audit(r):
        o = v.get("objectRef", {})
        if o.get("resource") != "endpointslices" or v["verb"] != "patch":
            continue
        name = o.get("name", "")
        side = "direct push" if name == "istiod-direct" else "tether" if name.startswith("istiod-v") else None
        if side is None:
            continue
        got, done = ts(v["requestReceivedTimestamp"]), ts(v["stageTimestamp"])
        k = bisect.bisect(starts, got) - 1
        if k >= 0 and (k not in first or first[k][1] > got):
            first[k] = (side, got, done)
    for k, (side, got, done) in first.items():
        c = central[k]
        d = out.setdefault((side, c[2]), {"hop": [], "write": [], "to agent": [], "agent->write": []})
        d["hop"].append((got - c[1]) * 1000)
        d["write"].append((done - got) * 1000)
        i = bisect.bisect(recv, c[0])
        if side == "tether" and i < len(recv) and recv[i] < got:
            d["to agent"].append((recv[i] - c[1]) * 1000)
            d["agent->write"].append((got - recv[i]) * 1000)
for (side, verb), d in sorted(out.items()):
    parts = "  ".join(f"{n} {pct(v, .5):.2f}/{pct(v, .9):.2f}" for n, v in d.items() if v)
    print(f"{side:12} central {verb:6} n={len(d['hop']):4}  {parts}")

# The hub's part, from its "sending snapshot" lines. Matched by time, not by version: a readiness
# flip back brings an earlier state (and its version) again.
sends = {r: [] for r in REMOTES}
for f in glob.glob(f"{run}/e2e-*/hub.log*"):
    for l in open(f):
        m = re.search(r"^(\S+) DEBUG stream\{cluster=(\S+) .*sending snapshot", l)
        if m and m.group(2) in sends:
            sends[m.group(2)].append(ts(m.group(1)))
for r in REMOTES:
    sends[r].sort()


def first_after(times, t, before):
    i = bisect.bisect(times, t)
    return times[i] if i < len(times) and times[i] < before else None


order = {"first": [], "second": [], "third": []}
to_agent = []
for k, (got, answered, verb) in enumerate(central):
    # A deleted pod's second state follows its write by tens of ms: readiness flips and new pods only.
    if verb == "delete":
        continue
    until = central[k + 1][0] if k + 1 < len(central) else float("inf")
    times = [first_after(sends[r], got, min(until, got + 0.05)) for r in REMOTES]
    if None in times:
        continue
    for name, t in zip(order, sorted(times)):
        order[name].append((t - answered) * 1000)
    for r, t in zip(REMOTES, times):
        a = first_after(agent_recv[r], t, until)
        if a is not None:
            to_agent.append((a - t) * 1000)
if to_agent:
    parts = "  ".join(f"{n} remote {pct(v, .5):.2f}/{pct(v, .9):.2f}" for n, v in order.items())
    print(f"hub          central response -> sending snapshot: {parts}  (n={len(order['first'])})")
    print(f"hub          sending snapshot -> the agent has it: {pct(to_agent, .5):.2f}/{pct(to_agent, .9):.2f}  (n={len(to_agent)})")
