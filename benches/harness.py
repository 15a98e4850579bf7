#!/usr/bin/env python3
"""Load, config churn and process sampling for benches/chaos.sh and benches/soak.sh.

Subcommands (each bounded in time; every address is taken from the command line, loopback in
the scripts):

  load    HTTP/1.1 and h2c (prior knowledge) clients in front of one or more proxies, behind
          an emulated load balancer: it polls each proxy's /readyz and sends only to ready
          ones, as a Kubernetes Service or a cloud load balancer would. Every request's
          outcome is classified (success, or a cause: connect refused, reset, closed, timeout,
          HTTP status...). A failure on a proxy that the chaos driver had marked not ready
          (draining, down, starting: the EVENTS file) with nothing answered yet is what a load
          balancer that has not noticed yet sees: it is counted apart as excused and the
          request goes to another proxy, as a load balancer's redispatch does. Everything else
          is a failure.
  churn   Config changes in a watched directory at a steady rate: HTTPRoutes added and
          removed (one file each), and an extra Service's EndpointSlice flipped.
  verify  After churn: each proxy serves exactly the churn routes whose files exist.
  sample  RSS, open fds and TCP connections of processes every few seconds; at the end a
          least-squares slope after the warm-up.

HTTP/2 uses the `h2` package (pure Python; the scripts install it with pip when missing).
"""

import argparse
import asyncio
import collections
import errno
import http.client
import json
import os
import random
import re
import socket
import sys
import time


# --------------------------------------------------------------------------------------------
# What the chaos driver did, and when (lines "EPOCH NAME STATE" appended to a file).


class Timeline:
    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = ""
        self.events = collections.defaultdict(list)  # name -> [(t, state)], in time order

    def refresh(self):
        if not self.path or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            f.seek(self.offset)
            data = f.read()
            self.offset = f.tell()
        data = self.partial + data
        lines = data.split("\n")
        self.partial = lines.pop()
        for line in lines:
            parts = line.split()
            if len(parts) == 3:
                self.events[parts[1]].append((float(parts[0]), parts[2]))

    def state_at(self, name, t):
        state = "up"  # nothing written yet: started before the load
        for te, s in self.events.get(name, ()):
            if te > t:
                break
            state = s
        return state

    def not_up_during(self, name, t0, t1):
        """True if NAME was anything but up at some moment of [t0, t1]."""
        self.refresh()
        if self.state_at(name, t0) != "up":
            return True
        return any(t0 <= te <= t1 and s != "up" for te, s in self.events.get(name, ()))

    def first(self, name, state, t0, t1):
        """When NAME entered STATE within [t0, t1], or None."""
        self.refresh()
        for te, s in self.events.get(name, ()):
            if t0 <= te <= t1 and s == state:
                return te
        return None

    def states(self, t):
        self.refresh()
        return {n: self.state_at(n, t) for n in self.events}


# --------------------------------------------------------------------------------------------
# Load client.


# The proxy never processed these (RFC 9113 8.7): any client may send them again.
SAFE_TO_RETRY = ("h2_goaway_unprocessed", "h2_refused_stream", "h2_unsent_connection_gone")


class AttemptError(Exception):
    def __init__(self, cause, detail=""):
        super().__init__(cause)
        self.cause = cause
        self.detail = detail


class Attempt:
    """One try of a request on one proxy."""

    __slots__ = ("proxy", "proto", "method", "t0", "t_written", "t1", "reused", "got_bytes",
                 "cause", "detail", "status", "pod", "stream_id")

    def __init__(self, proxy, proto, method):
        self.proxy = proxy
        self.proto = proto
        self.method = method
        self.t0 = time.time()
        self.t_written = None
        self.t1 = None
        self.reused = False
        self.got_bytes = False
        self.cause = None
        self.detail = ""
        self.status = None
        self.pod = None
        self.stream_id = None

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}


def cause_of_os_error(e, got_bytes, phase):
    if isinstance(e, ConnectionRefusedError):
        return "connect_refused"
    where = "mid_response" if got_bytes else "before_response"
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return f"{phase}_reset" if phase == "connect" else f"reset_{where}"
    if isinstance(e, asyncio.IncompleteReadError):
        return f"closed_{where}"
    name = errno.errorcode.get(getattr(e, "errno", None) or 0, type(e).__name__)
    return f"{phase}_error_{name}"


def check_body(a, status, body, pods):
    a.status = status
    if status != 200:
        a.cause = f"http_{status}" if status < 500 else f"http_5xx_{status}"
        a.detail = body[:200].decode("utf-8", "replace")
        return
    try:
        pod = json.loads(body)["pod"]
    except (ValueError, KeyError, TypeError):
        a.cause = "bad_body"
        a.detail = body[:200].decode("utf-8", "replace")
        return
    if pods and pod not in pods:
        a.cause = "unexpected_backend"
        a.detail = pod
        return
    a.pod = pod


class Proxy:
    def __init__(self, spec, index):
        # NAME=HOST:PORT@ADMINPORT
        name, rest = spec.split("=", 1)
        addr, admin = rest.split("@")
        host, port = addr.rsplit(":", 1)
        self.name, self.host, self.port, self.admin = name, host, int(port), int(admin)
        self.index = index
        self.ready = False
        self.checks = 0


class H1Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.requests = 0

    def close(self):
        try:
            self.writer.close()
        except Exception:
            pass


async def read_h1_response(conn, a, method):
    head = await conn.reader.readuntil(b"\r\n\r\n")
    a.got_bytes = True
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise AttemptError("bad_response", lines[0][:100])
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        pass
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await conn.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await conn.reader.readuntil(b"\r\n")  # no trailers expected
                break
            body += await conn.reader.readexactly(size)
            await conn.reader.readexactly(2)
    elif "content-length" in headers:
        body = await conn.reader.readexactly(int(headers["content-length"]))
    else:
        body = await conn.reader.read()  # delimited by close
        headers["connection"] = "close"
    keep = headers.get("connection", "").lower() != "close"
    return status, body, keep


class H2Conn:
    """An h2c connection. GOAWAY frames are taken out before the h2 package sees them: it
    closes its state machine on the first GOAWAY, whereas streams up to the GOAWAY's last
    stream id must still be answered (RFC 9113 6.8); streams above it were never processed."""

    def __init__(self, proxy, reader, writer):
        import h2.config
        import h2.connection
        self.proxy = proxy
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.streams = {}  # id -> [future, attempt, status, body, pending upload]
        self.goaway = None  # (last stream id, error code)
        self.dead = None
        self.buf = bytearray()
        self.flush()
        self.task = asyncio.ensure_future(self.read_loop())

    def usable(self):
        return self.dead is None and self.goaway is None

    def flush(self):
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def close(self):
        self.dead = self.dead or "closed by client"
        try:
            self.writer.close()
        except Exception:
            pass

    async def request(self, a, method, path, authority, body):
        if not self.usable():
            # Went away between being picked and this request: nothing was sent.
            raise AttemptError("h2_unsent_connection_gone", str(self.goaway or self.dead))
        sid = self.h2.get_next_available_stream_id()
        a.stream_id = sid
        fut = asyncio.get_running_loop().create_future()
        self.streams[sid] = [fut, a, None, bytearray(), body or b""]
        headers = [(":method", method), (":scheme", "http"), (":authority", authority),
                   (":path", path), ("user-agent", "rauta-bench")]
        if body:
            headers.append(("content-length", str(len(body))))
        self.h2.send_headers(sid, headers, end_stream=not body)
        if body:
            self.send_pending(sid)
        self.flush()
        await self.writer.drain()
        a.t_written = time.time()
        try:
            return await fut
        except asyncio.CancelledError:
            # Timed out: reset the stream so the proxy stops working on it.
            if sid in self.streams and self.dead is None:
                del self.streams[sid]
                try:
                    self.h2.reset_stream(sid, 8)  # CANCEL
                    self.flush()
                except Exception:
                    pass
            raise

    def send_pending(self, sid):
        st = self.streams.get(sid)
        while st and st[4]:
            n = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size,
                    len(st[4]))
            if n <= 0:
                return
            chunk, st[4] = st[4][:n], st[4][n:]
            self.h2.send_data(sid, chunk, end_stream=not st[4])

    def resolve(self, sid, result=None, error=None):
        st = self.streams.pop(sid, None)
        if st is None or st[0].done():
            return
        if error is not None:
            st[0].set_exception(error)
        else:
            st[0].set_result(result)

    def on_goaway(self, payload):
        last = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        self.goaway = (last, code)
        for sid in [s for s in self.streams if s > last]:
            self.resolve(sid, error=AttemptError("h2_goaway_unprocessed", f"last={last} code={code}"))

    def fail_all(self, cause, detail=""):
        self.dead = cause
        for sid in list(self.streams):
            st = self.streams[sid]
            if self.goaway and sid > self.goaway[0]:
                self.resolve(sid, error=AttemptError("h2_goaway_unprocessed", detail))
                continue
            where = "mid_response" if st[1].got_bytes else "before_response"
            c = f"{cause}_{where}"
            if self.goaway and self.goaway[1] != 0:
                c = f"h2_goaway_error_{self.goaway[1]}_then_{c}"
            self.resolve(sid, error=AttemptError(c, detail))

    async def read_loop(self):
        import h2.events
        import h2.exceptions
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    self.fail_all("closed")
                    break
                self.buf += data
                while len(self.buf) >= 9:
                    length = int.from_bytes(self.buf[0:3], "big")
                    if len(self.buf) < 9 + length:
                        break
                    frame = bytes(self.buf[:9 + length])
                    del self.buf[:9 + length]
                    if frame[3] == 0x7:
                        self.on_goaway(frame[9:])
                        continue
                    for ev in self.h2.receive_data(frame):
                        self.on_event(ev, h2.events)
                self.flush()
                if self.goaway and not self.streams:
                    self.close()
                    break
        except (ConnectionResetError, BrokenPipeError) as e:
            self.fail_all("reset", str(e))
        except h2.exceptions.ProtocolError as e:
            self.fail_all("h2_protocol_error", str(e)[:200])
        except asyncio.CancelledError:
            self.fail_all("cancelled")
        except Exception as e:  # noqa: BLE001 - any other error fails the streams, logged
            self.fail_all("client_error", f"{type(e).__name__}: {e}"[:200])
        finally:
            self.close()

    def on_event(self, ev, events):
        sid = getattr(ev, "stream_id", None)
        st = self.streams.get(sid) if sid is not None else None
        if isinstance(ev, events.ResponseReceived) and st:
            st[1].got_bytes = True
            st[2] = int(dict(ev.headers).get(":status", 0))
        elif isinstance(ev, events.DataReceived):
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if st:
                st[3] += ev.data
        elif isinstance(ev, events.StreamEnded) and st:
            self.resolve(sid, result=(st[2], bytes(st[3])))
        elif isinstance(ev, events.StreamReset) and st:
            code = ev.error_code
            name = getattr(code, "name", str(code))
            self.resolve(sid, error=AttemptError(
                "h2_refused_stream" if int(code) == 7 else f"h2_rst_{name}", ""))
        elif isinstance(ev, events.WindowUpdated):
            for s in list(self.streams):
                self.send_pending(s)


class Load:
    def __init__(self, args):
        self.args = args
        self.proxies = [Proxy(s, i) for i, s in enumerate(args.proxy)]
        self.timeline = Timeline(args.events)
        self.backends = args.backend or []
        self.pods = set(args.pods.split(",")) if args.pods else set()
        self.stop_at = None
        self.counts = collections.Counter()
        self.by_proto = collections.defaultdict(collections.Counter)
        self.failures = collections.Counter()
        self.contexts = collections.Counter()
        self.excused = collections.Counter()
        self.pod_counts = collections.Counter()
        self.latencies = []
        self.fail_log = open(args.failures, "w") if args.failures else None
        self.logged = 0
        self.rr = 0

    # --- the emulated load balancer ---------------------------------------------------------

    async def health_loop(self, p):
        while time.time() < self.stop_at:
            ok = False
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(p.host, p.admin), 1.0)
                w.write(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                line = await asyncio.wait_for(r.readline(), 1.0)
                ok = line.split(b" ")[1:2] == [b"200"]
                w.close()
            except (OSError, asyncio.TimeoutError, IndexError):
                ok = False
            p.ready = ok
            p.checks += 1
            await asyncio.sleep(self.args.health_interval)

    async def pick(self, avoid):
        """A ready proxy, preferring those not in AVOID; waits up to 5 s for one."""
        deadline = time.time() + 5
        while True:
            ready = [p for p in self.proxies if p.ready]
            fresh = [p for p in ready if p.name not in avoid]
            choice = fresh or ready
            if choice:
                self.rr += 1
                return choice[self.rr % len(choice)]
            if time.time() > deadline:
                return None
            await asyncio.sleep(0.02)

    # --- classification -------------------------------------------------------------------

    def excuse(self, a):
        """Why a failed attempt is not the gateway's fault, or None."""
        if a.cause in SAFE_TO_RETRY:
            # The proxy said it never processed the stream: any client may send it again.
            return a.cause
        if a.cause.startswith("http_5xx_503") and self.backends and all(
                self.timeline.not_up_during(b, a.t0, a.t1) for b in self.backends):
            return "no_backend_up_503"
        if a.got_bytes or a.cause.startswith(("http_", "bad_", "unexpected_")):
            return None
        if not self.timeline.not_up_during(a.proxy, a.t0, a.t1):
            return None
        drain = self.timeline.first(a.proxy, "draining", a.t0, a.t1)
        if drain is not None and a.t_written is not None and a.t_written < drain - self.args.race_window:
            # Written well before SIGTERM and never answered: in flight, and a drain must
            # finish what is in flight.
            return None
        return f"proxy_not_ready_{a.cause}"

    def record_failure(self, a, cause):
        self.failures[cause] += 1
        self.by_proto[a.proto]["failed"] += 1
        # What the driver had done when the request started: the servers not up then.
        states = self.timeline.states(a.t0)
        self.contexts[", ".join(f"{n} {s}" for n, s in sorted(states.items()) if s != "up")
                      or "everything up"] += 1
        if self.fail_log and self.logged < 20000:
            self.logged += 1
            d = a.as_dict()
            d["counted_as"] = cause
            d["states_at_start"] = self.timeline.states(a.t0)
            d["states_at_end"] = self.timeline.states(a.t1)
            self.fail_log.write(json.dumps(d) + "\n")
            self.fail_log.flush()

    async def request(self, client, method, body, attempt_fn):
        self.counts["requests"] += 1
        self.by_proto[client.proto]["requests"] += 1
        tried = set()
        for _ in range(3):
            p = await self.pick(tried)
            if p is None:
                self.failures["no_ready_proxy"] += 1
                self.by_proto[client.proto]["failed"] += 1
                return
            a = Attempt(p.name, client.proto, method)
            self.counts["attempts"] += 1
            await attempt_fn(client, p, a, method, body)
            a.t1 = time.time()
            if a.cause is None:
                self.counts["ok"] += 1
                self.by_proto[client.proto]["ok"] += 1
                self.pod_counts[a.pod] += 1
                self.latencies.append(a.t1 - a.t0)
                return
            why = self.excuse(a)
            if why is None:
                self.record_failure(a, a.cause)
                return
            # A load balancer takes a server out when connecting to it fails, until its
            # health check passes again, and sends the request to another one.
            self.excused[why] += 1
            if a.cause not in SAFE_TO_RETRY:
                p.ready = False
            tried.add(p.name)
        self.record_failure(a, "excused_three_times")

    # --- HTTP/1.1 ---------------------------------------------------------------------------

    async def h1_attempt(self, client, p, a, method, body):
        conn = client.conns.get(p.name)
        every = 1 if client.fresh else self.args.new_conn_every
        fresh = every > 0 and client.sent % every == 0
        if conn is not None and (fresh or conn.reader.at_eof()):
            # A kept-alive connection the proxy has closed meanwhile (idle, drained) is not
            # used again: every HTTP client checks that before reusing one.
            conn.close()
            conn = None
        client.sent += 1
        phase = "connect"
        try:
            if conn is None:
                client.conns.pop(p.name, None)
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(p.host, p.port), self.args.timeout)
                w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = H1Conn(r, w)
                client.conns[p.name] = conn
            a.reused = conn.requests > 0
            phase = "send"
            head = (f"{method} {self.args.path} HTTP/1.1\r\nHost: {self.args.host}\r\n"
                    f"User-Agent: rauta-bench\r\n")
            if body:
                head += f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n"
            conn.writer.write(head.encode() + b"\r\n" + (body or b""))
            await conn.writer.drain()
            a.t_written = time.time()
            phase = "response"
            status, rbody, keep = await asyncio.wait_for(
                read_h1_response(conn, a, method), self.args.timeout)
            conn.requests += 1
            if not keep:
                conn.close()
                client.conns.pop(p.name, None)
            check_body(a, status, rbody, self.pods)
            return
        except asyncio.TimeoutError:
            a.cause = f"{phase}_timeout" if phase == "connect" else "timeout"
        except AttemptError as e:
            a.cause, a.detail = e.cause, e.detail
        except (OSError, asyncio.IncompleteReadError) as e:
            a.cause = cause_of_os_error(e, a.got_bytes, phase)
            a.detail = str(e)[:200]
        except (ValueError, asyncio.LimitOverrunError) as e:
            a.cause, a.detail = "bad_response", str(e)[:200]
        if conn is not None:
            conn.close()
        client.conns.pop(p.name, None)

    # --- h2c --------------------------------------------------------------------------------

    async def h2_conn(self, client, p):
        conn = client.conns.get(p.name)
        if conn is not None and conn.usable():
            return conn, True
        lock = client.locks.setdefault(p.name, asyncio.Lock())
        async with lock:
            conn = client.conns.get(p.name)
            if conn is not None and conn.usable():
                return conn, True
            r, w = await asyncio.wait_for(
                asyncio.open_connection(p.host, p.port), self.args.timeout)
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = H2Conn(p, r, w)
            client.conns[p.name] = conn
            client.all_conns.append(conn)
            return conn, False

    async def h2_attempt(self, client, p, a, method, body):
        phase = "connect"
        try:
            conn, a.reused = await self.h2_conn(client, p)
            phase = "response"
            status, rbody = await asyncio.wait_for(
                conn.request(a, method, self.args.path, self.args.host, body), self.args.timeout)
            check_body(a, status, rbody, self.pods)
        except asyncio.TimeoutError:
            a.cause = f"{phase}_timeout" if phase == "connect" else "timeout"
        except AttemptError as e:
            a.cause, a.detail = e.cause, e.detail
        except (OSError, asyncio.IncompleteReadError) as e:
            a.cause = cause_of_os_error(e, a.got_bytes, phase)
            a.detail = str(e)[:200]
        except Exception as e:  # noqa: BLE001 - the h2 package's own errors, say
            a.cause, a.detail = f"client_error_{type(e).__name__}", str(e)[:200]

    # --- the clients ------------------------------------------------------------------------

    async def worker(self, client, rate, attempt_fn, seed):
        rng = random.Random(seed)
        interval = 1.0 / rate if rate > 0 else 0
        next_at = time.time()
        n = 0
        while time.time() < self.stop_at:
            n += 1
            method, body = "GET", None
            if self.args.post_every and n % self.args.post_every == 0:
                method = "POST"
                body = rng.randbytes(rng.randint(1, self.args.post_max_bytes))
            await self.request(client, method, body, attempt_fn)
            if interval:
                next_at += interval
                now = time.time()
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                elif now - next_at > 1:
                    next_at = now  # behind by more than a second: do not burst to catch up

    async def run(self):
        args = self.args
        self.stop_at = time.time() + args.duration
        health = [asyncio.ensure_future(self.health_loop(p)) for p in self.proxies]
        deadline = time.time() + 30
        while not any(p.ready for p in self.proxies):
            if time.time() > deadline:
                print("load: no proxy became ready in 30 s", file=sys.stderr)
                return 2
            await asyncio.sleep(0.05)
        workers = []
        for i in range(args.h1_clients + args.h1_fresh_clients):
            fresh = i >= args.h1_clients
            c = argparse.Namespace(proto="h1-new-conn" if fresh else "h1", conns={}, sent=0,
                                   fresh=fresh)
            workers.append(self.worker(c, args.rate, self.h1_attempt, i))
        for i in range(args.h2_clients):
            c = argparse.Namespace(proto="h2c", conns={}, locks={}, all_conns=[], sent=0)
            for s in range(args.h2_streams):
                workers.append(self.worker(c, args.rate / args.h2_streams, self.h2_attempt,
                                           1000 + i * 100 + s))
        started = time.time()
        await asyncio.gather(*workers)
        elapsed = time.time() - started
        for h in health:
            h.cancel()
        self.report(elapsed)
        return 0

    def report(self, elapsed):
        c = self.counts
        lat = sorted(self.latencies)

        def pct(q):
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0

        failed = sum(self.failures.values())
        out = {
            "requests": c["requests"], "ok": c["ok"], "attempts": c["attempts"],
            "failed": failed, "seconds": round(elapsed, 1),
            "by_protocol": {k: dict(v) for k, v in self.by_proto.items()},
            "failures": dict(self.failures), "excused": dict(self.excused),
            "failure_contexts": dict(self.contexts),
            "backends": dict(self.pod_counts),
            "latency_ms": {"p50": round(pct(0.5), 2), "p99": round(pct(0.99), 2),
                           "p999": round(pct(0.999), 2), "max": round(lat[-1] * 1000, 1) if lat else 0},
            "health_checks": {p.name: p.checks for p in self.proxies},
        }
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(out, f, indent=1)
        pfx = self.args.prefix
        print(f"{pfx}: {c['requests']} requests in {elapsed:.0f} s ({c['requests'] / max(elapsed, 1):.0f}/s), "
              f"{c['ok']} ok, {failed} failed; {c['attempts']} attempts")
        for proto, v in sorted(self.by_proto.items()):
            print(f"{pfx}:   {proto}: {v['requests']} requests, {v['ok']} ok, {v['failed']} failed")
        print(f"{pfx}: answered by " + ", ".join(f"{k}={v}" for k, v in sorted(self.pod_counts.items())))
        print(f"{pfx}: latency ms p50 {out['latency_ms']['p50']} p99 {out['latency_ms']['p99']} "
              f"p99.9 {out['latency_ms']['p999']} max {out['latency_ms']['max']}")
        if self.excused:
            print(f"{pfx}: excused and sent again to the other proxy (the proxy tried was not ready: "
                  "what a load balancer sees before its health check notices):")
            for k, v in sorted(self.excused.items()):
                print(f"{pfx}:   {k}={v}")
        print(f"{pfx}: failures by cause:" + ("" if self.failures else " none"))
        for k, v in sorted(self.failures.items()):
            print(f"{pfx}:   {k}={v}")
        if self.contexts and self.args.events:
            print(f"{pfx}: failures by what was not up when the request started:")
            for k, v in self.contexts.most_common():
                print(f"{pfx}:   {v} with {k}")


def cmd_load(args):
    if args.h2_clients:
        try:
            import h2  # noqa: F401
        except ImportError:
            print("load: the h2 package is missing (python3 -m pip install h2)", file=sys.stderr)
            return 2
    return asyncio.run(Load(args).run())


# --------------------------------------------------------------------------------------------
# Config churn.

ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{{name: {gw}}}]
  hostnames: [{host}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /churn/{k}}}}}]
    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-churn, value: "{k}-{gen}"}}]}}}}]
    backendRefs: [{{name: {svc}, port: 80}}]
"""

SLICE = """apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {svc}-{i}, namespace: {ns}, labels: {{kubernetes.io/service-name: {svc}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: {ready}}}}}]
"""


def route_file(d, k):
    return os.path.join(d, f"churn-route-{k:03}.yaml")


def write_atomic(path, text):
    tmp = os.path.join(os.path.dirname(path), ".churn.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def cmd_churn(args):
    rng = random.Random(args.seed)
    ports = [int(p) for p in args.endpoint_ports.split(",")]
    slices = os.path.join(args.dir, "churn-endpoints.yaml")
    counts = collections.Counter()
    gen = 0
    interval = 1.0 / args.rate
    start = time.time()
    stop_at = start + args.duration
    next_at = start
    while time.time() < stop_at:
        gen += 1
        op = rng.random()
        k = rng.randrange(args.routes)
        path = route_file(args.dir, k)
        if op < 0.8:
            # Add a route, or edit it if it is there; or remove it.
            if os.path.exists(path) and op < 0.4:
                os.unlink(path)
                counts["route_removed"] += 1
            else:
                counts["route_edited" if os.path.exists(path) else "route_added"] += 1
                name = f"churn-{k}-{gen}" if args.unique_names else f"churn-{k}"
                write_atomic(path, ROUTE.format(k=k, gen=gen, name=name, ns=args.namespace,
                                                gw=args.gateway, svc=args.service, host=args.host))
        else:
            # Flap the churn Service's endpoints: each slice in or out, ready or not (at
            # least one ready endpoint stays, so its routes answer 200 whenever they exist).
            docs = []
            for i, port in enumerate(ports):
                if i == 0 or rng.random() < 0.5:
                    ready = "true" if i == 0 or rng.random() < 0.5 else "false"
                    docs.append(SLICE.format(svc=args.service, ns=args.namespace, i=i,
                                             port=port, ready=ready))
            write_atomic(slices, "---\n".join(docs))
            counts["endpoints_flipped"] += 1
        next_at += interval
        now = time.time()
        if next_at > now:
            time.sleep(next_at - now)
        elif now - next_at > 1:
            counts["behind_by_over_1s"] += 1
            next_at = now
    elapsed = time.time() - start
    total = sum(v for k, v in counts.items() if k != "behind_by_over_1s")
    detail = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"{args.prefix}: {total} config changes in {elapsed:.0f} s ({total / elapsed:.0f}/s): {detail}")
    return 0


def get(host, port, path, hostname, timeout=2.0):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": hostname})
        r = c.getresponse()
        r.read()
        return r.status, r.getheader("x-churn")
    finally:
        c.close()


def cmd_verify(args):
    """Each proxy serves exactly the churn routes whose files exist (after churn stopped)."""
    proxies = [Proxy(s, i) for i, s in enumerate(args.proxy)]
    deadline = time.time() + args.timeout
    while True:
        wrong = []
        for p in proxies:
            for k in range(args.routes):
                path = route_file(args.dir, k)
                want = 200 if os.path.exists(path) else 404
                want_gen = None
                if want == 200:
                    m = re.search(r'value: "(\d+-\d+)"', open(path).read())
                    want_gen = m.group(1) if m else None
                try:
                    status, gen = get(p.host, p.port, f"/churn/{k}", args.host)
                except OSError as e:
                    status, gen = str(e), None
                if status != want or (want == 200 and gen != want_gen):
                    wrong.append(f"{p.name} /churn/{k}: want {want} {want_gen or ''}, got {status} {gen or ''}")
        if not wrong or time.time() > deadline:
            break
        time.sleep(0.5)
    n = args.routes * len(proxies)
    print(f"{args.prefix}: {n - len(wrong)} of {n} churn routes as their files say on every proxy"
          + ("" if not wrong else f" after {args.timeout:.0f} s; wrong: " + "; ".join(wrong[:10])))
    print(f"{args.prefix}_final_config_mismatches={len(wrong)}")
    return 0


# --------------------------------------------------------------------------------------------
# Sampling (soak).


def proc_sample(pid):
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, fds, threads, cpu


def tcp_counts(pids):
    """Established TCP sockets per pid (ss -tanp), and TIME-WAIT sockets on the machine."""
    import subprocess
    est = collections.Counter()
    try:
        out = subprocess.run(["ss", "-Htanp", "state", "established"], capture_output=True,
                             text=True, timeout=10).stdout
        for line in out.splitlines():
            for pid in set(re.findall(r"pid=(\d+)", line)):
                if int(pid) in pids:
                    est[int(pid)] += 1
        tw = subprocess.run(["ss", "-Htan", "state", "time-wait"], capture_output=True,
                            text=True, timeout=10).stdout
        time_wait = len(tw.splitlines())
    except (OSError, subprocess.SubprocessError):
        time_wait = -1
    return est, time_wait


def slope(xs, ys):
    """Least-squares slope and its standard error."""
    n = len(xs)
    if n < 3:
        return 0.0, 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    resid = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    se = (resid / (n - 2) / sxx) ** 0.5
    return b, se


def cmd_sample(args):
    procs = []
    for spec in args.process:
        name, pid = spec.split("=")
        procs.append((name, int(pid)))
    pids = {pid for _, pid in procs}
    rows = []  # (t, name, rss_kib, fds, threads, cpu_s, established)
    start = time.time()
    stop_at = start + args.duration
    out = open(args.out, "w") if args.out else None
    if out:
        out.write("seconds,process,rss_kib,fds,threads,cpu_seconds,tcp_established,time_wait\n")
    while True:
        t = time.time() - start
        est, tw = tcp_counts(pids)
        for name, pid in procs:
            try:
                rss, fds, threads, cpu = proc_sample(pid)
            except OSError:
                print(f"{args.prefix}: {name} (pid {pid}) is gone at {t:.0f} s", file=sys.stderr)
                continue
            rows.append((t, name, rss, fds, threads, cpu, est[pid]))
            if out:
                out.write(f"{t:.1f},{name},{rss},{fds},{threads},{cpu:.2f},{est[pid]},{tw}\n")
                out.flush()
        if time.time() + args.interval > stop_at:
            break
        time.sleep(args.interval)
    warm = args.duration * args.warmup
    print(f"{args.prefix}: {len(rows) // max(len(procs), 1)} samples every {args.interval:.0f} s over "
          f"{args.duration / 60:.1f} min; slopes fitted after the first {warm:.0f} s (warm-up)")
    results = {}
    for name, pid in procs:
        mine = [r for r in rows if r[1] == name]
        after = [r for r in mine if r[0] >= warm]
        if len(after) < 3:
            print(f"{args.prefix}: {name}: too few samples after warm-up", file=sys.stderr)
            continue
        mins = [r[0] / 60 for r in after]
        rs, rse = slope(mins, [r[2] for r in after])
        fs, fse = slope(mins, [r[3] for r in after])
        ts, _ = slope(mins, [r[6] for r in after])
        cpu = (after[-1][5] - after[0][5]) / max(after[-1][0] - after[0][0], 1) * 100
        rss = [r[2] / 1024 for r in after]
        fds = [r[3] for r in after]
        est = [r[6] for r in after]
        print(f"{args.prefix}: {name} (pid {pid}): RSS {mine[0][2] / 1024:.1f} MiB at start, "
              f"{rss[0]:.1f} after warm-up, {rss[-1]:.1f} at the end (min {min(rss):.1f}, max {max(rss):.1f}); "
              f"slope {rs:+.1f} ± {rse:.1f} KiB/min")
        print(f"{args.prefix}: {name}: fds {fds[0]} after warm-up, {fds[-1]} at the end (min {min(fds)}, "
              f"max {max(fds)}), slope {fs:+.2f} ± {fse:.2f}/min; threads {after[-1][4]}; "
              f"TCP established {min(est)}-{max(est)} (slope {ts:+.2f}/min); CPU {cpu:.0f}% of a core")
        results[name] = (rs, fs)
    for name, (rs, fs) in results.items():
        print(f"soak_rss_slope_kib_per_min_{name}={rs:.1f}")
    for name, (rs, fs) in results.items():
        print(f"soak_fd_slope_per_min_{name}={fs:.2f}")
    if results:
        worst_rss = max(results, key=lambda n: results[n][0])
        worst_fd = max(results, key=lambda n: results[n][1])
        print(f"{args.prefix}: below, the larger slope of the processes: RSS {worst_rss}, fds {worst_fd}")
        print(f"soak_rss_slope_kib_per_min={results[worst_rss][0]:.1f}")
        print(f"soak_fd_slope_per_min={results[worst_fd][1]:.2f}")
    return 0


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    lp = sub.add_parser("load", help="load through the proxies; prints a summary")
    lp.add_argument("--proxy", action="append", required=True, help="NAME=HOST:PORT@ADMINPORT")
    lp.add_argument("--duration", type=float, required=True)
    lp.add_argument("--h1-clients", type=int, default=2)
    lp.add_argument("--h1-fresh-clients", type=int, default=0,
                    help="HTTP/1.1 clients that open a new connection for every request")
    lp.add_argument("--h2-clients", type=int, default=2)
    lp.add_argument("--h2-streams", type=int, default=4, help="concurrent streams per h2c client")
    lp.add_argument("--rate", type=float, default=100, help="requests/s per client (0: flat out)")
    lp.add_argument("--new-conn-every", type=int, default=0,
                    help="HTTP/1.1: a new connection every N requests (0: keep-alive only)")
    lp.add_argument("--post-every", type=int, default=0, help="every Nth request is a POST")
    lp.add_argument("--post-max-bytes", type=int, default=16384)
    lp.add_argument("--path", default="/load")
    lp.add_argument("--host", default="bench.example")
    lp.add_argument("--timeout", type=float, default=10)
    lp.add_argument("--health-interval", type=float, default=0.1)
    lp.add_argument("--race-window", type=float, default=0.25,
                    help="a request written this long before its proxy's SIGTERM was in flight")
    lp.add_argument("--events", help="the chaos driver's events file")
    lp.add_argument("--backend", action="append", help="backend names in the events file")
    lp.add_argument("--pods", help="comma-separated pod names a 200 may come from")
    lp.add_argument("--failures", help="JSON lines: every failed attempt (first 20000)")
    lp.add_argument("--json", help="summary as JSON")
    lp.add_argument("--prefix", default="load")
    lp.set_defaults(fn=cmd_load)

    cp = sub.add_parser("churn", help="config changes in a watched directory")
    cp.add_argument("--dir", required=True)
    cp.add_argument("--rate", type=float, default=100)
    cp.add_argument("--duration", type=float, required=True)
    cp.add_argument("--routes", type=int, default=50)
    cp.add_argument("--namespace", default="bench")
    cp.add_argument("--gateway", default="gw")
    cp.add_argument("--service", default="churn")
    cp.add_argument("--host", default="bench.example")
    cp.add_argument("--endpoint-ports", required=True)
    cp.add_argument("--unique-names", action="store_true",
                    help="every write names its route anew (what is kept per route name must go)")
    cp.add_argument("--seed", type=int, default=1)
    cp.add_argument("--prefix", default="churn")
    cp.set_defaults(fn=cmd_churn)

    vp = sub.add_parser("verify", help="each proxy serves exactly the churn routes on disk")
    vp.add_argument("--dir", required=True)
    vp.add_argument("--proxy", action="append", required=True)
    vp.add_argument("--routes", type=int, default=50)
    vp.add_argument("--host", default="bench.example")
    vp.add_argument("--timeout", type=float, default=20)
    vp.add_argument("--prefix", default="verify")
    vp.set_defaults(fn=cmd_verify)

    sp = sub.add_parser("sample", help="RSS, fds, TCP connections; slopes after warm-up")
    sp.add_argument("process", nargs="+", help="NAME=PID")
    sp.add_argument("--duration", type=float, required=True)
    sp.add_argument("--interval", type=float, default=5)
    sp.add_argument("--warmup", type=float, default=0.2, help="share of the run left out of the fit")
    sp.add_argument("--out", help="CSV of every sample")
    sp.add_argument("--prefix", default="soak")
    sp.set_defaults(fn=cmd_sample)

    args = ap.parse_args()
    sys.exit(args.fn(args))


if __name__ == "__main__":
    main()
