#!/usr/bin/env python3
"""A process's own time on a change's path in `make bench` section 1, from `perf`: the window from
reading a change's bytes to writing the request that passes it on, and where the CPU samples in
those windows went.

Build with frame pointers (a target directory of its own), run section 1 alone with that build,
and record one process (the hub, or one agent) while it runs, with the socket tracepoints beside
the CPU samples:

    CARGO_TARGET_DIR=/tmp/prof RUSTFLAGS="-C force-frame-pointers=yes" \\
        CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --workspace --bins
    TETHER_BENCH_ONLY=propagation /tmp/prof/release/tether-bench &
    # once the agents run: PID=$(pgrep -P <bench pid> -f tether-hub) (or one tether-agent)
    perf record -F 20000 -g -e cpu-clock -e syscalls:sys_enter_recvfrom \\
        -e syscalls:sys_exit_recvfrom -e syscalls:sys_enter_writev -p $PID -o w.perf -- sleep 30
    perf script -i w.perf -F tid,time,event,trace,ip,sym > w.txt
    python3 tests/tools/windows.py w.txt hub      # or: agent

hub: a window opens when the hub reads more than 500 bytes from the connection whose reads are
most often followed, within 3 ms, by writes to three other connections (the central Pod watch
and the agents' streams), and ends at the first write to each of those (p50 of the first and the
third). agent: a window opens when the agent reads more than 100 bytes from the connection whose
reads are most often followed directly by a write to another one (the hub's stream, then the
remote API server) and ends at that write, counted only with no other syscall between.
"""
import bisect, collections, re, sys

path, mode = sys.argv[1], sys.argv[2]
FD = re.compile(r"fd: (0x[0-9a-f]+)")

events = []  # (time, tid, what, fd, bytes, frames), what: r(ead) w(rite) s(ample) o(ther)
enter_fd = {}
for block in open(path).read().split("\n\n"):
    lines = block.strip("\n").split("\n")
    m = re.match(r"\s*(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)", lines[0]) if lines else None
    if not m:
        continue
    t, tid, event, rest = float(m[2]), int(m[1]), m[3], m[4]
    frames = [re.sub(r"^\s*[0-9a-f]+ ", "", l).strip() for l in lines[1:]]
    if event == "syscalls:sys_enter_recvfrom":
        enter_fd[tid] = int(FD.search(rest)[1], 16)
        events.append((t, tid, "o", enter_fd[tid], 0, frames))
    elif event == "syscalls:sys_exit_recvfrom":
        n = int(rest.strip(), 16)
        if 0 < n < 1 << 63:
            events.append((t, tid, "r", enter_fd.get(tid), n, frames))
    elif event == "syscalls:sys_enter_writev":
        events.append((t, tid, "w", int(FD.search(rest)[1], 16), 0, frames))
    elif event.startswith("cpu-clock"):
        events.append((t, tid, "s", None, 0, frames))
events.sort(key=lambda e: e[0])
syscalls = [e for e in events if e[2] != "s"]


def q(values, p):
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * p))] * 1000, 3)


windows = []  # (start, end, first..., samples)
if mode == "hub":
    pattern = collections.Counter()
    for i, e in enumerate(syscalls):
        if e[2] == "r" and e[4] > 500:
            fds = []
            for f in syscalls[i + 1 : i + 400]:
                if f[0] - e[0] > 0.003:
                    break
                if f[2] == "w" and f[3] != e[3] and f[3] not in fds:
                    fds.append(f[3])
            if len(fds) >= 3:
                pattern[(e[3], tuple(sorted(fds[:3])))] += 1
    (src, outs), _ = pattern.most_common(1)[0]
    print(f"hub: central watch fd {src}, agent fds {list(outs)}")
    firsts, thirds = [], []
    for i, e in enumerate(syscalls):
        if not (e[2] == "r" and e[3] == src and e[4] > 500):
            continue
        seen = {}
        for f in syscalls[i + 1 : i + 600]:
            if f[0] - e[0] > 0.005 or (f[2] == "r" and f[3] == src):
                break
            if f[2] == "w" and f[3] in outs and f[3] not in seen:
                seen[f[3]] = f[0]
            if len(seen) == len(outs):
                break
        if seen:
            times = sorted(seen.values())
            firsts.append(times[0] - e[0])
            if len(times) == len(outs):
                thirds.append(times[-1] - e[0])
            windows.append((e[0], times[0]))
    print(f"{len(firsts)} windows; read -> first send p10/p50/p90 {q(firsts, .1)} / {q(firsts, .5)} / "
          f"{q(firsts, .9)} ms; -> third send {q(thirds, .1)} / {q(thirds, .5)} / {q(thirds, .9)} ms")
else:
    pairs = collections.Counter(
        (a[3], b[3]) for a, b in zip(syscalls, syscalls[1:])
        if a[2] == "r" and b[2] == "w" and a[3] != b[3] and a[4] > 100)
    (src, dst), _ = pairs.most_common(1)[0]
    print(f"agent: hub stream fd {src}, API server fd {dst}")
    spans = []
    for a, b in zip(syscalls, syscalls[1:]):
        if a[2] == "r" and a[3] == src and a[4] > 100 and b[2] == "w" and b[3] == dst:
            spans.append(b[0] - a[0])
            windows.append((a[0], b[0]))
    print(f"{len(spans)} windows; read -> write p10/p50/p90 {q(spans, .1)} / {q(spans, .5)} / {q(spans, .9)} ms")

# CPU samples inside the windows (every thread of the process), by what they were in.
cpu = [e for e in events if e[2] == "s"]
cpu_times = [e[0] for e in cpu]
samples = []
for start, end in windows:
    samples += cpu[bisect.bisect_left(cpu_times, start) : bisect.bisect_right(cpu_times, end)]
print(f"{len(samples)} samples in the windows, {len(samples) / max(1, len(windows)):.1f} per window")
PARTS = [
    ("decoding JSON (serde_json::de)", "serde_json::de"),
    ("kube watcher", "kube_runtime::watcher"),
    ("hub index", "tether_hub::index"),
    ("hub snapshot build", "tether_hub::snapshot::build"),
    ("agent plan", "tether_agent::plan::snapshot"),
    ("agent desired objects", "objects::objects_for"),
    ("HTTP/2 (h2)", "h2::"),
    ("HTTP/1 (hyper h1)", "hyper::proto::h1"),
    ("TLS (rustls)", "rustls::"),
    ("tonic", "tonic::"),
    ("malloc / free", "malloc|free"),
]
for name, key in PARTS:
    hit = sum(1 for s in samples if re.search(key, " | ".join(s[5])))
    print(f"  {100 * hit / max(1, len(samples)):5.1f}%  {name}")
