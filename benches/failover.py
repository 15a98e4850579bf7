#!/usr/bin/env python3
"""Backends, load and report for benches/failover.sh (see its header for the bench).

Subcommands:

  backends  HTTP/1.1 servers on 127.0.0.1 (keep-alive, asyncio protocols): healthy ones that
            answer 200 to everything, and one flipper. Until SIGUSR1 the flipper is healthy;
            SIGUSR1 starts the measured window: the flipper fails at once (503 to every request,
            /healthz included) and alternates between failing and healthy every FLIP seconds.
            After DURATION seconds it stays healthy, the counts stop and go to --out (JSON);
            the servers serve until SIGTERM. The flipper counts data requests received while
            failing and while healthy and /healthz probes, and records each flip, the first
            data request after each flip to healthy and the last one of each failing period.
  load      Open-loop HTTP/1.1 keep-alive load through the proxy: request k is due at
            start + k/RATE, round robin over the route hostnames, taken by the first idle
            connection of a fixed set (a lost connection is reopened). Counts answers by status
            and failed connections by cause, and records when each error happened (JSON).
  report    The key=value lines of one mode, from the backends' and the load's JSON.
"""

import argparse
import asyncio
import collections
import json
import os
import signal
import statistics
import sys
import time

# --------------------------------------------------------------------------------------------
# Backends


class Stats:
    def __init__(self):
        self.window = None  # (t0, t1) once SIGUSR1 came
        self.closed = False
        self.failing = False
        self.flips = []  # (t, "failing" | "healthy")
        self.to_failing = 0
        self.to_healthy = 0
        self.probes = 0
        self.probes_failed = 0
        self.first_after_healthy = {}  # flip index -> t of the first data request after it
        self.last_in_failing = {}  # flip index -> t of the last data request before the next
        self.per_backend = collections.Counter()  # name -> data requests in the window
        self.warmup = collections.Counter()  # name -> requests before the window

    def counting(self):
        return self.window is not None and not self.closed


class Backend(asyncio.Protocol):
    def __init__(self, name, stats, flipper):
        self.name, self.stats, self.flipper = name, stats, flipper
        self.buf = b""
        self.transport = None
        healthy_body = json.dumps({"pod": name}).encode() + b"\n"
        self.ok = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                   + str(len(healthy_body)).encode() + b"\r\n\r\n" + healthy_body)
        failing_body = b"failing\n"
        self.fail = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
                     b"content-length: " + str(len(failing_body)).encode() + b"\r\n\r\n"
                     + failing_body)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self.transport.close()
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            path = parts[1] if len(parts) > 1 else "/"
            length, close = 0, False
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v.strip() or 0)
                elif k == "connection" and v.strip().lower() == "close":
                    close = True
            if len(self.buf) < end + 4 + length:
                return  # the body is not all here yet (none expected)
            self.buf = self.buf[end + 4 + length:]
            self.answer(path)
            if close:
                self.transport.close()
                return

    def answer(self, path):
        s = self.stats
        probe = path.split("?")[0] == "/healthz"
        failing = self.flipper and s.failing
        if s.counting():
            if probe:
                if self.flipper:
                    s.probes += 1
                    s.probes_failed += failing
            else:
                s.per_backend[self.name] += 1
                if self.flipper:
                    now = time.time()
                    i = len(s.flips) - 1
                    if failing:
                        s.to_failing += 1
                        s.last_in_failing[i] = now
                    else:
                        s.to_healthy += 1
                        s.first_after_healthy.setdefault(i, now)
        elif s.window is None:
            s.warmup[self.name + ("/healthz" if probe else "")] += 1
        self.transport.write(self.fail if failing else self.ok)


async def run_backends(args):
    loop = asyncio.get_running_loop()
    stats = Stats()
    servers = []
    ports = [int(p) for p in args.healthy_ports.split(",") if p]
    for i, port in enumerate(ports):
        name = f"healthy-{i}"
        servers.append(await loop.create_server(
            lambda name=name: Backend(name, stats, False), "127.0.0.1", port, backlog=1024))
    servers.append(await loop.create_server(
        lambda: Backend("flipper", stats, True), "127.0.0.1", args.flipper_port, backlog=1024))
    stop = asyncio.Event()

    def set_state(failing):
        stats.failing = failing
        stats.flips.append((time.time(), "failing" if failing else "healthy"))

    def close_window():
        stats.closed = True
        stats.window = (stats.window[0], time.time())
        stats.failing = False
        with open(args.out + ".tmp", "w") as f:
            json.dump({
                "window": stats.window,
                "flips": stats.flips,
                "to_failing": stats.to_failing,
                "to_healthy": stats.to_healthy,
                "probes": stats.probes,
                "probes_failed": stats.probes_failed,
                "first_after_healthy": stats.first_after_healthy,
                "last_in_failing": stats.last_in_failing,
                "per_backend": stats.per_backend,
                "warmup": stats.warmup,
            }, f)
        os.replace(args.out + ".tmp", args.out)

    def start():
        if stats.window is not None:
            return
        t0 = time.time()
        stats.window = (t0, None)
        m0 = loop.time()
        set_state(True)
        k = 1
        while k * args.flip < args.duration - 1e-9:
            loop.call_at(m0 + k * args.flip, set_state, k % 2 == 0)
            k += 1
        loop.call_at(m0 + args.duration, close_window)

    loop.add_signal_handler(signal.SIGUSR1, start)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"backends: healthy on {ports}, flipper on {args.flipper_port}", file=sys.stderr,
          flush=True)
    await stop.wait()
    for s in servers:
        s.close()


# --------------------------------------------------------------------------------------------
# Load


class Load:
    def __init__(self, args):
        self.args = args
        self.hosts = [args.host_format.format(i) for i in range(args.routes)]
        self.statuses = collections.Counter()
        self.conn_errors = collections.Counter()
        self.error_times = []  # (t, cause) of every error
        self.sent = 0
        self.late = 0
        self.latencies = []
        self.tickets = asyncio.Queue()
        self.request = [
            (f"GET /failover HTTP/1.1\r\nhost: {h}\r\nuser-agent: rauta-failover\r\n\r\n").encode()
            for h in self.hosts]

    async def connect(self):
        host, port = self.args.target.rsplit(":", 1)
        return await asyncio.wait_for(asyncio.open_connection(host, int(port)), self.args.timeout)

    async def worker(self, conn):
        reader, writer = conn
        while True:
            k = await self.tickets.get()
            if k is None:
                break
            t0 = time.time()
            try:
                if writer is None:
                    reader, writer = await self.connect()
                writer.write(self.request[k % len(self.request)])
                status, keep = await asyncio.wait_for(read_response(reader), self.args.timeout)
                self.statuses[status] += 1
                self.latencies.append(time.time() - t0)
                if status != 200:
                    self.error_times.append((t0, f"http_{status}"))
                if not keep:
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                cause = type(e).__name__
                self.conn_errors[cause] += 1
                self.error_times.append((t0, cause))
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def run(self):
        a = self.args
        # Every connection is open before the window starts.
        conns = [await self.connect() for _ in range(a.connections)]
        workers = [asyncio.ensure_future(self.worker(c)) for c in conns]
        loop = asyncio.get_running_loop()
        if a.start_pid:
            os.kill(a.start_pid, signal.SIGUSR1)  # the backends' window starts with the load
        t0 = time.time()
        m0 = loop.time()
        total = int(a.rate * a.duration)
        for k in range(total):
            due = m0 + k / a.rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.tickets.qsize() > a.connections:
                self.late += 1
            self.tickets.put_nowait(k)
            self.sent += 1
        for _ in workers:
            self.tickets.put_nowait(None)
        await asyncio.gather(*workers)
        t1 = time.time()
        lat = sorted(self.latencies)
        pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0  # noqa: E731
        return {
            "start": t0, "end": t1, "sent": self.sent, "late": self.late,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "conn_errors": dict(self.conn_errors),
            "errors": sum(v for k, v in self.statuses.items() if k != 200)
            + sum(self.conn_errors.values()),
            "error_times": self.error_times,
            "achieved_rate": self.sent / (t1 - t0),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        }


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, keep, chunked = None, True, False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k, v = k.strip().lower(), v.strip().lower()
        if k == "content-length":
            length = int(v)
        elif k == "connection" and v == "close":
            keep = False
        elif k == "transfer-encoding" and "chunked" in v:
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            await reader.readexactly(size + 2)
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        keep = False
    return status, keep


def cmd_load(args):
    result = asyncio.run(Load(args).run())
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(f"load: sent {result['sent']} in {result['end'] - result['start']:.1f}s "
          f"({result['achieved_rate']:.0f}/s), statuses {result['statuses']}, connection errors "
          f"{result['conn_errors']}, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms",
          file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Report


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def cmd_report(args):
    b = json.load(open(args.backends))
    ld = json.load(open(args.load))
    m = args.mode
    t0, t1 = b["window"]
    flips = b["flips"]
    to_failing = [(i, t) for i, (t, s) in enumerate(flips) if s == "failing"]
    to_healthy = [(i, t) for i, (t, s) in enumerate(flips) if s == "healthy"]
    # Recovery: from each flip to healthy to the first data request the flipper got after it;
    # a healthy period without any is counted apart (its length as a lower bound is not used).
    recovery, unrecovered = [], 0
    for i, t in to_healthy:
        first = b["first_after_healthy"].get(str(i))
        if first is None:
            unrecovered += 1
        else:
            recovery.append((first - t) * 1000)
    # How long the flipper kept getting data requests after each flip to failing.
    last_ms = []
    for i, t in to_failing:
        last = b["last_in_failing"].get(str(i))
        last_ms.append((last - t) * 1000 if last is not None else 0.0)
    # The client's errors by failing period: how many, and how long after the flip the last
    # one was sent; errors outside every failing period are counted apart.
    bounds = [t for t, _ in flips] + [t1]
    per_period = collections.defaultdict(list)
    outside = 0
    for t, _cause in ld["error_times"]:
        i = next((j for j in range(len(flips)) if bounds[j] <= t < bounds[j + 1]), None)
        if i is not None and flips[i][1] == "failing":
            per_period[i].append(t - bounds[i])
        else:
            outside += 1
    last_error_ms = [max(per_period[i]) * 1000 if per_period[i] else 0.0 for i, _ in to_failing]
    errors = ld["errors"]
    n_fail = max(1, len(to_failing))
    out = [
        f"failover_{m}_flips_to_failing={len(to_failing)}",
        f"failover_{m}_flips_to_healthy={len(to_healthy)}",
        f"failover_{m}_sent={ld['sent']}",
        f"failover_{m}_achieved_rate={ld['achieved_rate']:.1f}",
        f"failover_{m}_statuses={','.join(f'{k}:{v}' for k, v in sorted(ld['statuses'].items()))}",
        f"failover_{m}_connection_errors={sum(ld['conn_errors'].values())}",
        f"failover_{m}_latency_p50_ms={ld['p50_ms']:.1f}",
        f"failover_{m}_latency_p99_ms={ld['p99_ms']:.1f}",
        f"failover_{m}_per_backend={','.join(f'{k}:{v}' for k, v in sorted(b['per_backend'].items()))}",
        f"failover_{m}_last_to_failing_ms={median(last_ms):.0f}",
        f"failover_{m}_unrecovered_periods={unrecovered}",
        f"failover_{m}_errors_per_failing_period={','.join(str(len(per_period[i])) for i, _ in to_failing)}",
        f"failover_{m}_last_error_ms={median(last_error_ms):.0f}",
        f"failover_{m}_errors_outside_failing={outside}",
        f"failover_{m}_to_failing={b['to_failing']}",
        f"failover_{m}_to_flipper_healthy={b['to_healthy']}",
        f"failover_errors_{m}={errors}",
        f"failover_{m}_probes_per_s={b['probes'] / (t1 - t0):.2f}",
        f"failover_{m}_recovery_ms={median(recovery):.0f}",
        f"failover_{m}_error_window_ms={errors / n_fail / args.rate * 1000:.0f}",
    ]
    print("\n".join(out))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    bp = sub.add_parser("backends")
    bp.add_argument("--healthy-ports", required=True, help="comma-separated")
    bp.add_argument("--flipper-port", type=int, required=True)
    bp.add_argument("--flip", type=float, default=5.0)
    bp.add_argument("--duration", type=float, required=True)
    bp.add_argument("--out", required=True)
    lp = sub.add_parser("load")
    lp.add_argument("--target", required=True, help="HOST:PORT of the proxy's listener")
    lp.add_argument("--routes", type=int, required=True)
    lp.add_argument("--host-format", default="r{}.failover.example")
    lp.add_argument("--rate", type=float, required=True)
    lp.add_argument("--duration", type=float, required=True)
    lp.add_argument("--connections", type=int, default=16)
    lp.add_argument("--timeout", type=float, default=5.0)
    lp.add_argument("--out", required=True)
    lp.add_argument("--start-pid", type=int, help="SIGUSR1 to this process as the load starts")
    rp = sub.add_parser("report")
    rp.add_argument("--mode", required=True)
    rp.add_argument("--backends", required=True)
    rp.add_argument("--load", required=True)
    rp.add_argument("--rate", type=float, required=True)
    args = p.parse_args()
    if args.cmd == "backends":
        asyncio.run(run_backends(args))
    elif args.cmd == "load":
        cmd_load(args)
    else:
        cmd_report(args)


if __name__ == "__main__":
    main()
