#!/usr/bin/env python3
"""Checks the checker: runs out/loadgen against a small fake pub/sub server
that loses, duplicates and reorders messages on purpose, and asserts that
loadgen reports exactly those faults (and none against the same server
behaving well). Speaks SSE (one channel; several channels per connection,
each event named by its channel; replay after a cursor), long-poll JSON (with
the Last-Event-ID cursor) and the publish endpoint like this module does.

    python3 bench/selftest.py [--loadgen bench/out/loadgen]
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


class FakeServer:
    def __init__(self, faults):
        self.faults = faults          # set of fault names to inject
        self.sse = []                 # (writer, channels) of SSE subscribers; channels None: /sub/
        self.messages = []            # (id, payload, channel)
        self.cond = asyncio.Condition()
        self.waiting = 0

    @staticmethod
    def seq_of(payload):
        return int(payload.split(".")[1])

    async def handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                hdrs = {}
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        hdrs[k.strip().lower()] = v.strip()
                body = b""
                if "content-length" in hdrs:
                    body = await reader.readexactly(int(hdrs["content-length"]))
                if path.startswith("/sub/"):
                    await self.serve_sse(reader, writer, None, hdrs.get("last-event-id"))
                    return
                if path.startswith("/msub?ch="):
                    await self.serve_sse(reader, writer, path[len("/msub?ch="):].split(","), None)
                    return
                if path.startswith("/lp/"):
                    await self.serve_lp(writer, hdrs.get("last-event-id"))
                elif path.startswith("/pub/") and method == "POST":
                    await self.publish(body.decode(), path[len("/pub/"):])
                    n = len(self.sse) + self.waiting
                    self.respond(writer, 201, json.dumps({"subscribers": n}))
                elif path.startswith("/pub/"):
                    self.respond(writer, 200, json.dumps({"subscribers": len(self.sse) + self.waiting}))
                else:
                    self.respond(writer, 404, "")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # client gone, or the case is over
        finally:
            writer.close()

    @staticmethod
    def respond(writer, status, body, extra=""):
        b = body.encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(b)}\r\n{extra}\r\n".encode() + b)

    async def serve_sse(self, reader, writer, channels, cursor):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        if cursor is not None:  # replay everything after it
            after = int(cursor.split("-")[0])
            for mid, payload, _ in self.messages[after:]:
                if "replay-lose" in self.faults and self.seq_of(payload) == 5:
                    continue
                writer.write(self.frame(mid, payload))
        await writer.drain()
        entry = (writer, channels)
        self.sse.append(entry)
        try:
            await reader.read()  # until the subscriber goes away
        finally:
            self.sse.remove(entry)

    @staticmethod
    def frame(mid, payload, event=None):
        ev = f"id: {mid}-0\n{'event: ' + event + chr(10) if event else ''}data: {payload}\n\n".encode()
        return f"{len(ev):x}\r\n".encode() + ev + b"\r\n"

    async def publish(self, payload, channel):
        mid = len(self.messages) + 1
        self.messages.append((mid, payload, channel))
        seq = self.seq_of(payload)
        multi = [(w, chs) for w, chs in self.sse if chs is not None]
        if multi:
            # Subscribers of several channels each: only those holding the channel, with the
            # channel's id as the event type.
            for w, chs in multi:
                mine = channel in chs
                if "m-lose" in self.faults and seq == 2 and mine:
                    continue
                if mine or ("m-misroute" in self.faults and seq == 3):
                    w.write(self.frame(mid, payload, channel))
            async with self.cond:
                self.cond.notify_all()
            return
        for i, w in enumerate([w for w, _ in self.sse]):
            if "lose" in self.faults and i == 0 and seq == 2:
                continue
            if "reorder" in self.faults and i == 2 and seq == 4:
                self.held = (mid, payload)  # sent after seq 5
                continue
            w.write(self.frame(mid, payload))
            if "dup" in self.faults and i == 1 and seq == 3:
                w.write(self.frame(mid, payload))
            if "reorder" in self.faults and i == 2 and seq == 5:
                w.write(self.frame(*self.held))
        async with self.cond:
            self.cond.notify_all()

    async def serve_lp(self, writer, cursor):
        after = int(cursor.split("-")[0]) if cursor else len(self.messages)
        self.waiting += 1
        try:
            async with self.cond:
                try:
                    await asyncio.wait_for(self.cond.wait_for(lambda: len(self.messages) > after), 5)
                except asyncio.TimeoutError:
                    self.respond(writer, 204, "", f"Last-Event-ID: {after}-0\r\n")
                    return
        finally:
            self.waiting -= 1
        out = []
        for mid, payload, _ in self.messages[after:after + 100]:
            out.append({"id": f"{mid}-0", "channel": "b", "data": payload})
            if "lp-dup" in self.faults and self.seq_of(payload) == 3:
                out.append({"id": f"{mid}-0", "channel": "b", "data": payload})
        last = self.messages[min(len(self.messages), after + 100) - 1][0]
        body = json.dumps({"messages": out, "last_event_id": f"{last}-0"}, separators=(",", ":"))
        self.respond(writer, 200, body, f"Last-Event-ID: {last}-0\r\nContent-Type: application/json\r\n")


async def one_case(loadgen, mode, faults, expect, extra):
    srv = FakeServer(faults)
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cmd = [loadgen, mode, "--port", str(port), "--subs", "3", "--procs", "1", "--pub-conns", "1",
           "--drain", "1", "--timeout", "30"] + extra
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    server.close()
    res = json.loads(out.decode().strip().splitlines()[-1])
    got = {k: res[k] for k in expect}
    ok = got == expect
    print(f"{'ok  ' if ok else 'FAIL'} {mode:8} faults={sorted(faults) or '-'}: expected {expect}, got {got}")
    return ok


async def main(loadgen):
    sse = ["--msgs", "10"]
    lp = ["--msgs", "10", "--rate", "50"]
    # 3 connections x 2 channels (m-0 .. m-5); message s goes to channel m-(s mod 6)
    multi = ["--msgs", "12", "--sub-channels", "2", "--sub-path", "/msub?ch=", "--channel", "m"]
    replay = ["--msgs", "10", "--replay", "--cursor", "0-0", "--subs", "1"]
    cases = [
        ("sse", set(), {"lost": 0, "dup": 0, "ooo": 0, "id_regress": 0, "received": 30, "ok": True}, sse),
        ("sse", {"lose"}, {"lost": 1, "dup": 0, "ooo": 0, "ok": False}, sse),
        ("sse", {"dup"}, {"lost": 0, "dup": 1, "ooo": 0, "ok": False}, sse),
        ("sse", {"reorder"}, {"lost": 0, "dup": 0, "ooo": 1, "id_regress": 1, "ok": False}, sse),
        ("sse", {"lose", "dup", "reorder"}, {"lost": 1, "dup": 1, "ooo": 1, "ok": False}, sse),
        ("longpoll", set(), {"lost": 0, "dup": 0, "ooo": 0, "received": 30, "ok": True}, lp),
        ("longpoll", {"lp-dup"}, {"lost": 0, "dup": 3, "ooo": 0, "ok": False}, lp),
        ("sse", set(), {"lost": 0, "dup": 0, "misrouted": 0, "received": 12, "ok": True}, multi),
        ("sse", {"m-lose"}, {"lost": 1, "misrouted": 0, "ok": False}, multi),
        ("sse", {"m-misroute"}, {"lost": 0, "misrouted": 2, "ok": False}, multi),
        ("sse", set(), {"lost": 0, "dup": 0, "ooo": 0, "received": 10, "ok": True}, replay),
        ("sse", {"replay-lose"}, {"lost": 1, "received": 9, "ok": False}, replay),
    ]
    results = [await one_case(loadgen, *c) for c in cases]
    return all(results)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen", default=os.path.join(HERE, "out", "loadgen"))
    a = ap.parse_args()
    sys.exit(0 if asyncio.run(main(os.path.abspath(a.loadgen))) else 1)
