#!/usr/bin/env python3
"""Benchmark driver: this module against nchan and a raw epoll ceiling.

Starts one nginx with the channels module (conf/channels.conf) and one with
nchan (conf/nchan.conf), each in its own prefix under out/, runs the
scenarios of issues 5, 11 and 13 with out/loadgen, alternating A/B over
rounds, and writes results/table.txt, results/results.json,
results/results.csv and results/fanout.png. See README.md for what each
scenario measures.
"""
import argparse
import csv
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GROUPS = ("mem", "fanout", "longpoll", "publish", "wide", "manych", "replay", "attack")

FULL = {
    "fanout_n": [1000, 5000, 10000, 20000],
    "bursts": 10,
    "stream_msgs": 100,
    "stream_rate": 1000,
    "mem_n": 10000,
    "lp_n": 1000,
    "lp_rates": [200, 100, 25],  # 200: answers batch messages; 100 (issue 13) and 25: about one per answer
    "lp_duration": 5,
    "pub_duration": 3,
    "pub_subs": [0, 100, 10000],
    "pub_channels": 10000,
    "pub_chan_msgs": 50000,  # 5 per channel
    "pub_big_msgs": 100,   # with >= 1000 subscribers: a fixed batch, not a duration
    "wide_n": 200,         # subscribers of 64 channels each (16-byte ids, all distinct)
    "wide_channels": 64,
    "many_conns": 25000,   # x many_per_conn = 100k channels, one subscriber each
    "many_per_conn": 4,
    "many_rate": 2000,
    "many_duration": 10,
    "replay_msgs": 100000,
    "replay_size": 100,
    "replay_max_s": 20,    # a replay still running after this is reported as incomplete
    "attack_subs": 1000,
    "attack_bursts": 20,
    "attack_msgs": 300,    # with the bursts, 320 publishes: p99 is about the 4th slowest
    "attack_rate": 50,     # light enough that neither server is saturated without attackers
    "attack_channels": 64,
    "attack_history": 1000,
    "attack_replayers": 20,
    "attack_read_bps": 65536,
    "attack_flood_rate": 100,
}
QUICK = dict(FULL, fanout_n=[1000, 5000], bursts=5, mem_n=2000, lp_n=200, lp_duration=3,
             pub_duration=2, pub_subs=[0, 100, 1000], pub_channels=2000, pub_chan_msgs=10000, pub_big_msgs=100,
             wide_n=50, many_conns=2500, many_duration=5, replay_msgs=20000, replay_max_s=10,
             attack_subs=200, attack_bursts=10, attack_msgs=100, attack_history=200)

PUB_CONNS = 16


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def children_of(pid):
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(name))
    return kids


def proc_cpu_s(pid):
    """CPU time of a (single-threaded) process: /proc/PID/schedstat's time on CPU in ns
    when the kernel has it, else utime+stime from /proc/PID/stat (10 ms ticks: too
    coarse for a burst of a few thousand deliveries)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            ns = int(f.read().split()[0])
        if ns > 0:
            return ns / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_kb(pid):
    """From /proc/PID/smaps_rollup: Rss, Pss, and Anon: the PSS of its anonymous memory
    (heap, pools, buffers: Pss_Anon, or Anonymous on kernels without it), which leaves out
    the shared zone pages it touched (Pss_Shmem, measured on their own through the zone's
    stats) and code pages run for the first time (Pss_File)."""
    out = {"Rss": 0, "Pss": 0, "Anon": 0}
    seen = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, rest = line.partition(":")
                if k in ("Rss", "Pss", "Pss_Anon", "Anonymous"):
                    seen[k] = int(rest.split()[0])
    except OSError:
        return out
    out["Rss"] = seen.get("Rss", 0)
    out["Pss"] = seen.get("Pss", 0)
    out["Anon"] = seen.get("Pss_Anon", seen.get("Anonymous", 0))
    return out


def http_get(port, path, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Accept": "text/json"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


class Nginx:
    """One nginx instance in its own prefix, started and stopped by PID."""

    def __init__(self, name, template, nginx_bin, module, outdir, static_file=None):
        self.name = name
        self.static_file = static_file
        self.template = template
        self.nginx_bin = nginx_bin
        self.module = module
        self.prefix = os.path.join(outdir, name)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        self.port = None
        self.master = None
        self.problems = []
        self.module_copied = False

    def start(self):
        os.makedirs(self.prefix, exist_ok=True)
        for p in ("nginx.pid",):
            try:
                os.unlink(os.path.join(self.prefix, p))
            except FileNotFoundError:
                pass
        self.port = free_port()
        # nginx maps the module file: one copy per bench run keeps a rebuild
        # during the run from changing (or rewriting) it between rounds.
        mod_copy = os.path.join(self.prefix, os.path.basename(self.module))
        if not self.module_copied:
            shutil.copyfile(self.module, mod_copy + ".tmp")
            os.replace(mod_copy + ".tmp", mod_copy)
            self.module_copied = True
        if self.static_file:
            os.makedirs(os.path.join(self.prefix, "static"), exist_ok=True)
            dst = os.path.join(self.prefix, "static", os.path.basename(self.static_file))
            if not os.path.exists(dst) or os.path.getsize(dst) != os.path.getsize(self.static_file):
                shutil.copyfile(self.static_file, dst)
        with open(self.template) as f:
            text = f.read()
        for k, v in {"@PREFIX@": self.prefix, "@PORT@": str(self.port), "@MODULE@": mod_copy,
                     "@NOFILE@": "20000", "@WORKER_CONNECTIONS@": "19500"}.items():
            text = text.replace(k, v)
        with open(self.conf, "w") as f:
            f.write(text)
        errlog = os.path.join(self.prefix, "error.log")
        self.log_offset = os.path.getsize(errlog) if os.path.exists(errlog) else 0
        r = subprocess.run([self.nginx_bin, "-p", self.prefix + "/", "-e", errlog, "-c", self.conf],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"{self.name}: nginx failed to start: {r.stderr.strip()}")
        deadline = time.time() + 10
        pidfile = os.path.join(self.prefix, "nginx.pid")
        while time.time() < deadline:
            if os.path.exists(pidfile) and port_open(self.port):
                with open(pidfile) as f:
                    self.master = int(f.read().strip())
                if len(self.workers()) >= 2:
                    self.wait_steady()
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: nginx did not come up on port {self.port}")

    def wait_steady(self, limit=5.0):
        """Waits until fresh workers have finished starting (their memory and CPU time stop
        moving), so that a measurement's "before" does not miss part of their setup."""
        end = time.time() + limit
        last = (self.mem_kb(), self.cpu_s())
        while time.time() < end:
            time.sleep(0.2)
            now = (self.mem_kb(), self.cpu_s())
            if now[0]["Anon"] == last[0]["Anon"] and now[0]["Pss"] == last[0]["Pss"] and now[1] - last[1] < 0.005:
                return
            last = now

    def workers(self):
        return children_of(self.master) if self.master else []

    def cpu_s(self):
        return sum(proc_cpu_s(p) for p in self.workers())

    def mem_kb(self):
        tot = {"Rss": 0, "Pss": 0, "Anon": 0}
        for p in self.workers():
            m = proc_mem_kb(p)
            for k in tot:
                tot[k] += m[k]
        return tot

    def zone_bytes(self):
        """Bytes in use in the shared zone: our `used` of the bench zone (stats), nchan's
        "shared memory used" (stub status, KiB). None when unreadable."""
        try:
            status, body = http_get(self.port, "/stats")
            if status != 200:
                return None
            if self.name == "nchan":
                m = re.search(r"shared memory used: (\d+)K", body)
                return int(m.group(1)) * 1024 if m else None
            for z in json.loads(body)["zones"]:
                if z["name"] == "bench":
                    return z["used"]
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            pass
        return None

    def stop(self):
        if not self.master:
            return
        pids = [self.master] + self.workers()
        subprocess.run([self.nginx_bin, "-p", self.prefix + "/", "-e",
                        os.path.join(self.prefix, "error.log"), "-c", self.conf, "-s", "stop"],
                       capture_output=True, timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline and any(os.path.exists(f"/proc/{p}") and not _zombie(p) for p in pids):
            time.sleep(0.05)
        for p in pids:
            if os.path.exists(f"/proc/{p}") and not _zombie(p):
                self.problems.append(f"pid {p} did not exit on stop; killed")
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.master = None
        self.scan_log()

    def scan_log(self):
        errlog = os.path.join(self.prefix, "error.log")
        try:
            with open(errlog, errors="replace") as f:
                f.seek(self.log_offset)
                for line in f:
                    if any(t in line for t in ("[alert]", "[emerg]", "[crit]", "exited on signal")):
                        self.problems.append(line.strip()[:300])
        except OSError:
            pass


def environment(nginx_bin):
    env = {"cpus": os.cpu_count(), "kernel": os.uname().release, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        env["nginx"] = subprocess.run([nginx_bin, "-v"], capture_output=True, text=True).stderr.strip()
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan"],
                           capture_output=True, text=True)
        env["nchan"] = r.stdout.strip()
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            env["loadavg_at_end"] = f.read().split()[:3]
    except OSError:
        pass
    return env


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def write_static_replay(path, n, size):
    """The bytes a replay of n messages of `size` bytes carries, as this module frames
    them (id: ms-counter, data:, blank line): the static file the replay is compared with."""
    ms = 1796000000000
    with open(path + ".tmp", "w") as f:
        for i in range(n):
            p = f"M{i % PUB_CONNS}.{i}.{1200000000 + i * 25}."
            f.write(f"id: {ms + i // 40}-{i % 40}\ndata: {p}{'x' * (size - len(p))}\n\n")
    os.replace(path + ".tmp", path)


class Attacker:
    """`loadgen attack` running next to a measured run: started, awaited until its
    hostile clients are in place, stopped by closing its stdin, result read back."""

    def __init__(self, cmd, errfile):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errfile)
        self.buf = b""
        self.result = None

    def _lines(self, until, want):
        fd = self.proc.stdout.fileno()
        while time.time() < until:
            r, _, _ = select.select([fd], [], [], min(1.0, max(0.0, until - time.time())))
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == want:
                    return ev
        return None

    def wait_ready(self, timeout):
        return self._lines(time.time() + timeout, "ready") is not None

    def stop(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.result = self._lines(time.time() + 30, "result")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.result


def opt(opts, name, default=None):
    return opts[opts.index(name) + 1] if name in opts else default


class Bench:
    def __init__(self, args):
        self.args = args
        self.p = QUICK if args.quick else FULL
        self.rounds = args.rounds
        self.outdir = os.path.join(HERE, "out")
        self.resdir = args.results or os.path.join(HERE, "results")
        os.makedirs(self.outdir, exist_ok=True)
        os.makedirs(self.resdir, exist_ok=True)
        self.runs = []
        self.src_net = int(time.time()) % 200
        self.servers = {}
        self.notes = []
        self.only = set(args.only.split(",")) if args.only else None
        static = None
        if self.want("replay"):
            static = os.path.join(self.outdir, "replay.txt")
            write_static_replay(static, self.p["replay_msgs"], self.p["replay_size"])
        if args.module and os.path.exists(args.module):
            self.servers["ours"] = Nginx("ours", os.path.join(HERE, "conf", "channels.conf"),
                                         args.nginx, args.module, self.outdir, static)
        else:
            self.notes.append(f"module {args.module!r} not found: this module was not measured")
        if os.path.exists(NCHAN_MODULE):
            self.servers["nchan"] = Nginx("nchan", os.path.join(HERE, "conf", "nchan.conf"),
                                          args.nginx, NCHAN_MODULE, self.outdir, static)
        else:
            self.notes.append(f"{NCHAN_MODULE} not found: nchan was not measured")
        if args.servers:
            keep = args.servers.split(",")
            self.servers = {k: v for k, v in self.servers.items() if k in keep}
        self.flip = False
        self.all_servers = dict(self.servers)

    def want(self, group):
        return self.only is None or group in self.only

    @staticmethod
    def settle(srv, quiet=0.01, window=0.25, limit=5.0):
        """Waits (at most `limit` s) until the server's workers are idle: less than `quiet`
        CPU seconds in `window` s, so that one run does not measure the tail of the last."""
        end = time.time() + limit
        last = srv.cpu_s()
        while time.time() < end:
            time.sleep(window)
            now = srv.cpu_s()
            if now - last < quiet:
                return
            last = now

    # ---- measuring a server ----------------------------------------------------------------

    def snapshot(self, srv, zone=False, pids=None):
        """CPU seconds and memory of a server's workers (or of the ceiling's server
        processes, by pid) at one instant, and the zone's bytes in use when asked."""
        snap = {"t": time.time()}
        if srv:
            snap["cpu"] = srv.cpu_s()
            snap["mem"] = srv.mem_kb()
            if zone:
                snap["zone"] = srv.zone_bytes()
        elif pids:
            snap["cpu"] = sum(proc_cpu_s(p) for p in pids)
        return snap

    # ---- one load generator run ------------------------------------------------------------

    def next_net(self):
        self.src_net += 1
        return self.src_net

    def loadgen(self, mode, server, opts, timeout, zone=False, before=None, steady=False):
        """Runs out/loadgen once. At each of its sync points ("ready": all subscribed;
        "bursts": the single messages are done; "published": a replay's messages are in;
        "done": all delivered) the server is measured before loadgen goes on; with
        `steady`, at "ready" once the workers' memory has stopped moving."""
        opts = [str(o) for o in opts]
        cmd = [self.args.loadgen, mode] + opts + [
            "--sync", "--src-net", str(self.next_net()), "--timeout", str(timeout)]
        srv = self.servers.get(server)
        if srv:
            cmd += ["--server", server, "--port", str(srv.port)]
        errpath = os.path.join(self.outdir, "loadgen.err")
        events = {}
        pids = None
        result = None
        with open(errpath, "a") as err:
            err.write(" ".join(cmd) + "\n")
            err.flush()
            if before is None and srv:
                before = self.snapshot(srv, zone)
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
            buf = b""
            deadline = time.time() + timeout + 30
            fd = proc.stdout.fileno()
            while True:
                left = deadline - time.time()
                if left <= 0:
                    log(f"    loadgen timed out, killing pid {proc.pid}")
                    proc.kill()
                    break
                r, _, _ = select.select([fd], [], [], min(left, 1.0))
                if not r:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    name = ev.get("event")
                    if name == "result":
                        result = ev
                    elif name:
                        pids = ev.get("server_pids") or pids
                        if steady and srv and name == "ready":
                            srv.wait_steady(3.0)
                        events[name] = self.snapshot(srv, zone and name == "ready", pids)
                        proc.stdin.write(b"go\n")
                        proc.stdin.flush()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if result is None:
            return {"ok": False, "error": f"no result (exit {proc.returncode}); see out/loadgen.err"}
        self.derive(result, opts, before, events)
        return result

    @staticmethod
    def derive(res, opts, before, ev):
        """Per-subscriber memory, per-delivery CPU and the like from the snapshots."""
        res["sync"] = {k: {kk: vv for kk, vv in v.items() if kk != "t"} for k, v in ev.items()}
        if before:
            res["sync"]["before"] = {k: v for k, v in before.items() if k != "t"}
        ready = max(1, res.get("ready") or 0)
        if before and "ready" in ev and "mem" in before and "mem" in ev["ready"]:
            for k, key in (("Rss", "mem_rss_kb_per_sub"), ("Pss", "mem_pss_kb_per_sub"),
                           ("Anon", "mem_anon_kb_per_sub")):
                res[key] = (ev["ready"]["mem"][k] - before["mem"][k]) / ready
            if before.get("zone") is not None and ev["ready"].get("zone") is not None:
                res["zone_kb_per_sub"] = (ev["ready"]["zone"] - before["zone"]) / 1024 / ready
        start = ev.get("ready") or ev.get("published")
        if start and "done" in ev and "cpu" in start:
            cpu = ev["done"]["cpu"] - start["cpu"]
            res["server_cpu_s"] = cpu
            if res.get("received"):
                res["cpu_us_per_delivery"] = cpu * 1e6 / res["received"]
            if res.get("published"):
                res["cpu_us_per_publish"] = cpu * 1e6 / res["published"]
            if res.get("responses"):
                res["cpu_us_per_answer"] = cpu * 1e6 / res["responses"]
        bursts = int(opt(opts, "--bursts", 0))
        if bursts and "ready" in ev and "cpu" in ev["ready"]:
            end = ev.get("bursts") or ev.get("done")
            if end:
                res["cpu_us_per_delivery_bursts"] = (end["cpu"] - ev["ready"]["cpu"]) * 1e6 / (bursts * ready)

    def record(self, rnd, scenario, param, server, res, key=None):
        res = dict(res)
        try:
            with open("/proc/loadavg") as f:
                res["loadavg"] = float(f.read().split()[0])
        except (OSError, ValueError):
            pass
        res.update({"round": rnd, "scenario": scenario, "param": param, "server_name": server})
        self.runs.append(res)
        chk = (f"lost={res.get('lost')} dup={res.get('dup')} ooo={res.get('ooo')} "
               f"failed={res.get('failed')} ok={res.get('ok')}")
        key = key or {"fanout": "burst_fanout_med_ms", "mem_sse": "mem_pss_kb_per_sub",
                      "mem_lp": "mem_pss_kb_per_sub", "longpoll": "cpu_us_per_answer",
                      "wide": "mem_anon_kb_per_sub", "manych": "cpu_us_per_delivery",
                      "replay": "replay_mb_s", "attack_base": "pub_lat_p99_ms",
                      "attack": "pub_lat_p99_ms"}.get(scenario, "pub_rate")
        v = res.get(key)
        v = f"{v:.3f}" if isinstance(v, float) else v
        log(f"  {time.time() - self.t0:5.0f}s [r{rnd}] {scenario:11} {str(param):>6} {server:7} {key}={v} {chk}")
        return res

    def order(self):
        names = [n for n in ("ours", "nchan") if n in self.servers and self.servers[n].master]
        self.flip = not self.flip
        return list(reversed(names)) if self.flip else names

    def restart(self, names=None):
        for n in names or list(self.servers):
            if n not in self.servers:
                continue
            srv = self.servers[n]
            srv.stop()
            try:
                srv.start()
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                # Keep measuring the others; the failure is in the report.
                log(f"bench: {e}")
                self.notes.append(str(e))
                srv.stop()
                del self.servers[n]

    # ---- scenarios -------------------------------------------------------------------------

    def fanout(self, rnd, n):
        p = self.p
        opts = ["--subs", n, "--bursts", p["bursts"], "--msgs", p["stream_msgs"], "--rate", p["stream_rate"],
                "--pub-conns", PUB_CONNS, "--channel", f"fan{rnd}n{n}", "--drain", 5]
        timeout = 60 + n // 100
        for name in self.order():
            self.record(rnd, "fanout", n, name, self.loadgen("sse", name, opts, timeout))
        self.record(rnd, "fanout", n, "ceiling", self.loadgen("ceiling", None, opts, timeout))

    def idle_memory(self, rnd, kind):
        n = self.p["mem_n"]
        mode = "sse" if kind == "mem_sse" else "longpoll"
        for name in self.order():
            self.restart([name])  # a fresh worker heap: nothing freed earlier to reuse
            opts = ["--subs", n, "--bursts", 1, "--channel", f"idle{rnd}", "--drain", 5]
            self.record(rnd, kind, n, name, self.loadgen(mode, name, opts, 120, steady=True))

    def longpoll(self, rnd, rate):
        p = self.p
        opts = ["--subs", p["lp_n"], "--rate", rate, "--duration", p["lp_duration"],
                "--pub-conns", PUB_CONNS, "--channel", f"lp{rnd}r{rate}", "--drain", 5]
        for name in self.order():
            self.record(rnd, "longpoll", rate, name, self.loadgen("longpoll", name, opts, 120))

    def publish(self, rnd, subs, channels=1):
        p = self.p
        opts = ["--subs", subs, "--pub-conns", PUB_CONNS, "--channel", f"pub{rnd}s{subs}c{channels}", "--drain", 5]
        if subs >= 1000:
            opts += ["--msgs", p["pub_big_msgs"]]
        else:
            opts += ["--duration", p["pub_duration"]]
        if channels > 1:
            opts += ["--pub-channels", channels, "--msgs", p["pub_chan_msgs"]]
        scen = "pub_chan" if channels > 1 else "publish"
        param = channels if channels > 1 else subs
        for name in self.order():
            self.record(rnd, scen, param, name, self.loadgen("publish", name, opts, 120))

    def wide(self, rnd):
        """Subscribers of 64 channels each (16-byte ids, every channel new): worker memory
        and zone bytes per subscriber; then one message on every channel, which each
        subscriber must get from all 64 of its channels."""
        p = self.p
        n, k = p["wide_n"], p["wide_channels"]
        opts = ["--subs", n, "--sub-channels", k, "--id-width", 16, "--channel", f"w{rnd}",
                "--sub-path", "/msub?ch=", "--msgs", n * k, "--rate", 0, "--pub-conns", PUB_CONNS, "--drain", 5]
        for name in self.order():
            self.restart([name])
            self.record(rnd, "wide", k, name, self.loadgen("sse", name, opts, 120, zone=True, steady=True))

    def many_channels(self, rnd):
        """100k channels (created by a publish each), one subscriber each: connections of
        `many_per_conn` channels (2 workers x 20,000 files cannot hold 100k connections);
        then many_rate publishes/s to random channels."""
        p = self.p
        conns, per = p["many_conns"], p["many_per_conn"]
        total = conns * per
        ch = f"mc{rnd}"
        for name in self.order():
            self.restart([name])
            srv = self.servers[name]
            before = self.snapshot(srv, zone=True)
            pre = self.loadgen("publish", name, ["--channel", ch, "--pub-channels", total, "--msgs", total,
                                                 "--pub-conns", PUB_CONNS, "--drain", 5], 120)
            opts = ["--subs", conns, "--sub-channels", per, "--channel", ch, "--sub-path", "/msub?ch=",
                    "--pub-pattern", "random", "--seed", rnd, "--rate", p["many_rate"],
                    "--duration", p["many_duration"], "--pub-conns", PUB_CONNS, "--drain", 5,
                    "--procs", max(1, (conns + 4999) // 5000)]
            # nchan's ids count seconds: a multiplexed subscriber arriving in the same second as
            # a channel's last publish gets that message despite "newest" (seen here).
            time.sleep(1.5)
            res = self.loadgen("sse", name, opts, 180, zone=True, before=before, steady=True)
            res["precreate_ok"] = pre.get("ok")
            res["ok"] = bool(res.get("ok")) and bool(pre.get("ok"))
            ready = (res.get("sync") or {}).get("ready") or {}
            if ready.get("mem"):
                res["mem_anon_b_per_channel"] = (ready["mem"]["Anon"] - before["mem"]["Anon"]) * 1024 / total
            if ready.get("zone") is not None and before.get("zone") is not None:
                res["zone_b_per_channel"] = (ready["zone"] - before["zone"]) / total
            self.record(rnd, "manych", total, name, res)

    def replay(self, rnd):
        """A client resuming n retained messages: time to the last one, and the same bytes
        as a static file from the same nginx (sendfile on, as Debian's nginx.conf has it)."""
        p = self.p
        n = p["replay_msgs"]
        runs, fetched = [], []
        for name in self.order():
            cursor = "0:0" if name == "nchan" else "0-0"
            opts = ["--replay", "--subs", 1, "--channel", f"r{rnd}", "--pub-path", "/rpub/", "--sub-path", "/rsub/",
                    "--msgs", n, "--rate", 0, "--size", p["replay_size"], "--pub-conns", PUB_CONNS,
                    "--cursor", cursor, "--drain", 5, "--drain-max", p["replay_max_s"]]
            res = self.loadgen("sse", name, opts, 180)
            # The same replay read by a plain reader (no SSE parsing, one 256 KiB read() at a
            # time, like the static file's): what the server delivers, not what the parsing
            # client keeps up with.
            if res.get("body_bytes"):
                hdr = "Last-Event-ID: " + cursor
                raw = self.loadgen("fetch", name, ["--path", f"/rsub/r{rnd}", "--header", hdr,
                                                   "--until-bytes", int(res["body_bytes"] * 0.98), "--repeat", 5], 120)
                res["raw_fetch"] = raw
                if raw.get("ok") and raw.get("fetch_ms"):
                    res["replay_raw_mb_s"] = raw["bytes"] / raw["fetch_ms"] / 1000
            fetch = self.loadgen("fetch", name, ["--path", "/static/replay.txt", "--repeat", 5], 60)
            res["static_fetch"] = fetch
            if fetch.get("ok") and fetch.get("bytes"):
                fetched += [fetch["bytes"] / t / 1000 for t in fetch.get("times_ms") or [] if t]
            span = res.get("replay_ms") or res.get("replay_wait_ms")
            if span and res.get("body_bytes"):
                res["replay_mb_s"] = res["body_bytes"] / span / 1000
                res["replay_msgs_s"] = (res.get("received") or 0) / span * 1000
            runs.append((name, res))
        # The static file is the same nginx code under either module: one yardstick per
        # round, the median of every fetch from both servers.
        static = statistics.median(fetched) if fetched else None
        for name, res in runs:
            res["static_mb_s"] = static
            if static and res.get("replay_mb_s"):
                res["replay_vs_static"] = res["replay_mb_s"] / static
            if static and res.get("replay_raw_mb_s"):
                res["replay_raw_vs_static"] = res["replay_raw_mb_s"] / static
            self.record(rnd, "replay", n, name, res)

    def attack(self, rnd):
        """Issue 11's scenario: legitimate subscribers and publishes, first alone, then next
        to 20 slow replayers of 64 long histories and a flood of subscribers naming new
        random channels. Publish p99 and fan-out time, attacked / not attacked."""
        p = self.p
        k = p["attack_channels"]
        hist = f"h{rnd}"
        ids = ",".join(f"{hist}-{i}" for i in range(k))
        legit = ["--subs", p["attack_subs"], "--bursts", p["attack_bursts"], "--msgs", p["attack_msgs"],
                 "--rate", p["attack_rate"], "--pub-conns", 4, "--drain", 5]
        for name in self.order():
            srv = self.servers[name]
            pre = self.loadgen("publish", name, ["--channel", hist, "--pub-channels", k, "--msgs", k * p["attack_history"],
                                                 "--pub-conns", PUB_CONNS, "--drain", 5], 120)
            self.settle(srv)
            base = self.loadgen("sse", name, legit + ["--channel", f"live{rnd}a"], 120)
            base["ok"] = bool(base.get("ok")) and bool(pre.get("ok"))
            self.record(rnd, "attack_base", k, name, base)
            # Ours: resume from before the first message (the issue's last_event_id=0-0). nchan
            # has no such cursor for a multiplexed stream: a location that starts with the oldest.
            path = f"/msub?ch={ids}&last_event_id=0-0" if name == "ours" else f"/msub-oldest?ch={ids}"
            cmd = [self.args.loadgen, "attack", "--port", str(srv.port), "--replayers", str(p["attack_replayers"]),
                   "--replay-path", path, "--read-bps", str(p["attack_read_bps"]),
                   "--flood-rate", str(p["attack_flood_rate"]), "--flood-path", "/msub?ch=",
                   "--src-net", str(self.next_net()), "--sync", "--timeout", "240"]
            with open(os.path.join(self.outdir, "loadgen.err"), "a") as err:
                err.write(" ".join(cmd) + "\n")
                err.flush()
                atk = Attacker(cmd, err)
                if not atk.wait_ready(30):
                    self.notes.append(f"{name}: the attackers were not in place within 30 s")
                time.sleep(1)  # a few pages of every replay in flight
                res = self.loadgen("sse", name, legit + ["--channel", f"live{rnd}b"], 120)
                res["attacker"] = atk.stop() or {"ok": False}
            a = res["attacker"]
            res["attack_replay_mb"] = (a.get("replay_bytes") or 0) / 1e6
            res["attack_flood_answered"] = sum(v for s, v in (a.get("flood_status") or {}).items() if s != "0")
            res["attack_flood_started"] = a.get("flood_started")
            for key in ("pub_lat_p99_ms", "burst_fanout_med_ms"):
                if isinstance(res.get(key), (int, float)) and isinstance(base.get(key), (int, float)) and base[key] > 0:
                    res[key + "_vs_base"] = res[key] / base[key]
            self.record(rnd, "attack", k, name, res)

    def run(self):
        t0 = self.t0 = time.time()
        log(f"bench: servers {', '.join(self.servers) or 'none'} + ceiling; "
            f"{self.rounds} round(s){' (quick)' if self.args.quick else ''}"
            f"{'; only ' + ','.join(sorted(self.only)) if self.only else ''}")
        for n in self.notes:
            log("bench: " + n)
        want = self.want
        try:
            for rnd in range(1, self.rounds + 1):
                log(f"round {rnd}/{self.rounds}")
                self.restart()
                if want("mem"):
                    self.idle_memory(rnd, "mem_sse")
                    self.idle_memory(rnd, "mem_lp")
                if want("fanout"):
                    for n in self.p["fanout_n"]:
                        self.fanout(rnd, n)
                if want("longpoll"):
                    for rate in self.p["lp_rates"]:
                        self.longpoll(rnd, rate)
                if want("publish"):
                    for s in self.p["pub_subs"]:
                        self.publish(rnd, s)
                    self.restart()  # fresh zones: the channels scenario measures creating them
                    self.publish(rnd, 0, self.p["pub_channels"])
                if want("wide"):
                    self.wide(rnd)
                if want("manych"):
                    self.many_channels(rnd)
                if want("replay"):
                    self.replay(rnd)
                if want("attack"):
                    self.restart()
                    self.attack(rnd)
        finally:
            for srv in self.servers.values():
                srv.stop()
        self.elapsed = time.time() - t0
        self.report()
        bad = [r for r in self.runs if r["server_name"] == "ours" and not r.get("ok")]
        if bad or "ours" not in self.servers:
            log(f"bench: FAILED: {len(bad)} run(s) of this module had lost/duplicated/reordered messages, "
                f"errors or did not run (see results/results.json)")
            return 1
        return 0

    # ---- summary ----------------------------------------------------------------------------

    def median(self, scenario, param, server, metric):
        vals = [r.get(metric) for r in self.runs
                if r["scenario"] == scenario and r["param"] == param and r["server_name"] == server]
        vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return statistics.median(vals) if vals else None

    def checks(self, scenario, param, server):
        rs = [r for r in self.runs
              if r["scenario"] == scenario and r["param"] == param and r["server_name"] == server]
        if not rs:
            return None
        c = {"runs": len(rs), "bad_runs": sum(1 for r in rs if not r.get("ok"))}
        for k in ("lost", "dup", "ooo", "id_regress", "misrouted", "failed"):
            c[k] = sum(r.get(k, 0) or 0 for r in rs)
        return c

    def rows(self):
        """(label, scenario, param, metric, better, target). A target is (kind, value, issue):
        "ceil": this/ceiling <= value; "nchan": this/nchan <= value; "nchan_min": this/nchan
        >= value; "max": this <= value; "min": this >= value; issue: the issue that sets it."""
        p = self.p
        rows = []
        for n in p["fanout_n"]:
            k = f"{n // 1000}k" if n >= 1000 else str(n)
            big = n in (10000, 20000)
            rows += [
                (f"fan-out {k} SSE: 1-msg burst, publish->last delivery (ms)", "fanout", n, "burst_fanout_med_ms",
                 "lower", ("ceil", 1.15, 13) if big else None),
                (f"fan-out {k} SSE: 1-msg burst latency p50 (ms)", "fanout", n, "burst_lat_p50_ms", "lower", None),
                (f"fan-out {k} SSE: 1-msg burst latency p99 (ms)", "fanout", n, "burst_lat_p99_ms", "lower", None),
                (f"fan-out {k} SSE: 1-msg bursts, server CPU us/delivery", "fanout", n, "cpu_us_per_delivery_bursts",
                 "lower", ("ceil", 1.05, 13) if big else None),
                (f"fan-out {k} SSE: 100 msgs @1k/s, first publish->last delivery (ms)", "fanout", n, "stream_span_ms",
                 "lower", None),
                (f"fan-out {k} SSE: 100 msgs @1k/s latency p50 (ms)", "fanout", n, "stream_lat_p50_ms", "lower", None),
                (f"fan-out {k} SSE: 100 msgs @1k/s latency p99 (ms)", "fanout", n, "stream_lat_p99_ms", "lower", None),
                (f"fan-out {k} SSE: bursts + stream, server CPU us/delivery", "fanout", n, "cpu_us_per_delivery",
                 "lower", None),
            ]
        m = p["mem_n"]
        rows += [
            (f"idle memory, {m} SSE subscribers: RSS KiB/subscriber", "mem_sse", m, "mem_rss_kb_per_sub", "lower", None),
            (f"idle memory, {m} SSE subscribers: PSS KiB/subscriber", "mem_sse", m, "mem_pss_kb_per_sub", "lower",
             ("max", 1.0, 13)),
            (f"idle memory, {m} long-poll waiters: RSS KiB/waiter", "mem_lp", m, "mem_rss_kb_per_sub", "lower", None),
            (f"idle memory, {m} long-poll waiters: PSS KiB/waiter", "mem_lp", m, "mem_pss_kb_per_sub", "lower",
             ("nchan", 0.4, 13)),
        ]
        n = p["lp_n"]
        for rate in p["lp_rates"]:
            head = f"long-poll {n} clients @{rate} msg/s"
            if rate >= 200:
                rows += [
                    (f"{head}: deliveries/s", "longpoll", rate, "deliveries_per_s", "higher", ("nchan_min", 2.0, 5)),
                    (f"{head}: latency p99 (ms)", "longpoll", rate, "stream_lat_p99_ms", "lower", None),
                    (f"{head}: server CPU us/delivery", "longpoll", rate, "cpu_us_per_delivery", "lower", ("nchan", 1.0, 5)),
                    (f"{head}: messages per answer", "longpoll", rate, "msgs_per_answer", "higher", None),
                ]
            else:
                rows += [
                    (f"{head}: server CPU us/answer", "longpoll", rate, "cpu_us_per_answer", "lower", ("nchan", 0.75, 13)),
                    (f"{head}: messages per answer", "longpoll", rate, "msgs_per_answer", "lower", None),
                    (f"{head}: server CPU us/delivery", "longpoll", rate, "cpu_us_per_delivery", "lower", None),
                    (f"{head}: latency p99 (ms)", "longpoll", rate, "stream_lat_p99_ms", "lower", None),
                ]
        for s in p["pub_subs"]:
            rows.append((f"publishes/s, {s} subscribers", "publish", s, "pub_rate", "higher",
                         ("nchan_min", 1.5, 5) if s in (0, 100) else None))
        rows.append(("server CPU us/publish, 0 subscribers", "publish", 0, "cpu_us_per_publish", "lower", None))
        rows.append((f"publishes/s, {p['pub_channels']} distinct channels", "pub_chan", p["pub_channels"], "pub_rate",
                     "higher", None))
        k = p["wide_channels"]
        head = f"wide: {p['wide_n']} subscribers x {k} channels (16-byte ids)"
        rows += [
            (f"{head}: worker heap KiB/subscriber", "wide", k, "mem_anon_kb_per_sub", "lower", ("max", 8.0, 13)),
            (f"{head}: worker RSS KiB/subscriber", "wide", k, "mem_rss_kb_per_sub", "lower", None),
            (f"{head}: zone KiB/subscriber", "wide", k, "zone_kb_per_sub", "lower", ("max", 8.0, 13)),
        ]
        total = p["many_conns"] * p["many_per_conn"]
        head = f"many channels: {total // 1000}k x 1 subscriber, {p['many_rate']} pub/s random"
        rows += [
            (f"{head}: server CPU us/delivery", "manych", total, "cpu_us_per_delivery", "lower", None),
            (f"{head}: worker heap bytes/channel", "manych", total, "mem_anon_b_per_channel", "lower", None),
            (f"{head}: zone bytes/channel", "manych", total, "zone_b_per_channel", "lower", None),
            (f"{head}: latency p99 (ms)", "manych", total, "stream_lat_p99_ms", "lower", None),
        ]
        n = p["replay_msgs"]
        head = f"replay of {n // 1000}k retained {p['replay_size']}-byte messages"
        rows += [
            (f"{head}: messages received", "replay", n, "received", "higher", ("min", n, 13)),
            (f"{head}: time to the last one (ms)", "replay", n, "replay_ms", "lower", None),
            (f"{head}: MB/s", "replay", n, "replay_mb_s", "higher", None),
            (f"{head}: same bytes as a static file, MB/s", "replay", n, "static_mb_s", "higher", None),
            (f"{head}: replay / static file throughput (SSE-parsing client)", "replay", n, "replay_vs_static", "higher", None),
            (f"{head}: MB/s to a plain reader", "replay", n, "replay_raw_mb_s", "higher", None),
            (f"{head}: replay / static file throughput (plain reader)", "replay", n, "replay_raw_vs_static", "higher", ("min", 0.5, 13)),
        ]
        k = p["attack_channels"]
        head = f"under attack ({p['attack_subs']} subscribers, {p['attack_rate']} pub/s)"
        rows += [
            (f"{head}: publish p99, no attackers (ms)", "attack_base", k, "pub_lat_p99_ms", "lower", None),
            (f"{head}: publish p99, attacked (ms)", "attack", k, "pub_lat_p99_ms", "lower", None),
            (f"{head}: publish p99, attacked / not", "attack", k, "pub_lat_p99_ms_vs_base", "lower", ("max", 1.5, 11)),
            (f"{head}: fan-out 1-msg burst, no attackers (ms)", "attack_base", k, "burst_fanout_med_ms", "lower", None),
            (f"{head}: fan-out 1-msg burst, attacked (ms)", "attack", k, "burst_fanout_med_ms", "lower", None),
            (f"{head}: fan-out, attacked / not", "attack", k, "burst_fanout_med_ms_vs_base", "lower", ("max", 1.5, 11)),
            (f"{head}: attackers' replayed MB during the run", "attack", k, "attack_replay_mb", "higher", None),
            (f"{head}: flood requests answered / started", "attack", k, "attack_flood_answered_share", "higher", None),
        ]
        return rows

    @staticmethod
    def target_text(t):
        if not t:
            return ""
        kind, v, issue = t
        num = f"{v:g}" if v < 1000 else f"{v:,.0f}"
        return {"ceil": f"<= {num}x ceil", "nchan": f"<= {num}x nchan", "nchan_min": f">= {num}x nchan",
                "max": f"<= {num}", "min": f">= {num}"}[kind] + f" (#{issue})"

    @staticmethod
    def target_met(t, row):
        if not t:
            return ""
        kind, v, _ = t
        x = {"ceil": row["ours_vs_ceiling"], "nchan": row["ours_vs_nchan"], "nchan_min": row["ours_vs_nchan"],
             "max": row["ours"], "min": row["ours"]}[kind]
        if x is None:
            return "?"
        ok = x <= v if kind in ("ceil", "nchan", "max") else x >= v
        return "yes" if ok else "NO"

    def report(self):
        for r in self.runs:
            if isinstance(r.get("stream_span_s"), (int, float)):
                r["stream_span_ms"] = r["stream_span_s"] * 1000
            if r.get("attack_flood_started"):
                r["attack_flood_answered_share"] = r.get("attack_flood_answered", 0) / r["attack_flood_started"]
        table = []
        for label, scen, param, metric, better, target in self.rows():
            row = {"metric": label, "scenario": scen, "param": param, "key": metric, "better": better,
                   "target": self.target_text(target)}
            for s in ("ours", "nchan", "ceiling"):
                row[s] = self.median(scen, param, s, metric)
                row[s + "_checks"] = self.checks(scen, param, s)
            o, nc, ce = row["ours"], row["nchan"], row["ceiling"]
            row["ours_vs_nchan"] = o / nc if o is not None and nc else None
            row["ours_vs_ceiling"] = o / ce if o is not None and ce else None
            row["nchan_vs_ceiling"] = nc / ce if nc is not None and ce else None
            row["met"] = self.target_met(target, row)
            if all(row[s] is None for s in ("ours", "nchan", "ceiling")) and not any(
                    row[s + "_checks"] for s in ("ours", "nchan", "ceiling")):
                continue  # a scenario that did not run (ONLY=...)
            table.append(row)

        def fmt(v):
            if v is None:
                return "-"
            if abs(v) >= 1000:
                return f"{v:,.0f}"
            if abs(v) >= 100:
                return f"{v:.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.2f}"

        def flag(c):
            return "" if c is None or c["bad_runs"] == 0 else "!"

        lines = []
        w = max([len(r["metric"]) for r in table] + [40])
        tw = max([len(r["target"]) for r in table] + [6])
        lines.append(f"{'metric (median of ' + str(self.rounds) + ' round(s))':<{w}} | {'this':>9} | {'nchan':>9} | "
                     f"{'ceiling':>9} | {'this/nchan':>10} | {'this/ceil':>9} | {'nchan/ceil':>10} | "
                     f"{'target':<{tw}} | met")
        lines.append("-" * len(lines[0]))
        for r in table:
            lines.append(f"{r['metric']:<{w}} | {fmt(r['ours']) + flag(r['ours_checks']):>9} | "
                         f"{fmt(r['nchan']) + flag(r['nchan_checks']):>9} | "
                         f"{fmt(r['ceiling']) + flag(r['ceiling_checks']):>9} | "
                         f"{fmt(r['ours_vs_nchan']):>10} | {fmt(r['ours_vs_ceiling']):>9} | "
                         f"{fmt(r['nchan_vs_ceiling']):>10} | {r['target']:<{tw}} | {r['met']}")
        lines.append("")
        lines.append("checks per scenario (every message of every run: lost, duplicated, out of order; "
                     "'!' above marks a figure with a failed run):")
        seen = []
        for r in self.runs:
            key = (r["scenario"], r["param"])
            if key not in seen:
                seen.append(key)
        totals = {}
        for scen, param in seen:
            parts = []
            for s in ("ours", "nchan", "ceiling"):
                c = self.checks(scen, param, s)
                if not c:
                    continue
                t = totals.setdefault(s, {k: 0 for k in c})
                for k in c:
                    t[k] += c[k]
                verdict = "ok" if c["bad_runs"] == 0 else f"FAILED {c['bad_runs']}/{c['runs']} runs"
                extra = " ".join(f"{k}={c[k]}" for k in ("id_regress", "misrouted", "failed") if c[k])
                parts.append(f"{s} {c['runs']} runs lost={c['lost']} dup={c['dup']} ooo={c['ooo']}"
                             f"{' ' + extra if extra else ''}: {verdict}")
            lines.append(f"  {scen + ' ' + str(param):<18} " + "; ".join(parts))
        for s, t in totals.items():
            lines.append(f"  all {s:8} runs={t['runs']} bad_runs={t['bad_runs']} lost={t['lost']} dup={t['dup']} "
                         f"out_of_order={t['ooo']} id_regress={t['id_regress']} misrouted={t['misrouted']} "
                         f"failed_connections={t['failed']}")
        problems = {n: s.problems for n, s in self.all_servers.items() if s.problems}
        for n, pr in problems.items():
            lines.append(f"  {n} error.log: {len(pr)} alert/emerg/crit/signal/stop line(s), first: {pr[0]}")
        for n in self.notes:
            lines.append("  note: " + n)
        cmd = "make -C bench" + (" quick" if self.args.quick else "") + \
            (f" ROUNDS={self.rounds}" if not self.args.quick and self.rounds != 3 else "") + \
            (f" ONLY={','.join(sorted(self.only))}" if self.only else "")
        lines.append(f"elapsed {self.elapsed:.0f}s on {time.strftime('%Y-%m-%d')}; command: {cmd}")
        text = "\n".join(lines)
        print(text)

        with open(os.path.join(self.resdir, "results.json"), "w") as f:
            json.dump({"environment": environment(self.args.nginx), "quick": self.args.quick, "rounds": self.rounds,
                       "elapsed_s": self.elapsed, "params": self.p, "table": table, "checks": totals,
                       "server_problems": problems, "notes": self.notes, "runs": self.runs}, f, indent=1)
        with open(os.path.join(self.resdir, "results.csv"), "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["metric", "scenario", "param", "key", "this", "nchan", "ceiling", "this_vs_nchan",
                         "this_vs_ceiling", "nchan_vs_ceiling", "target", "met", "bad_runs_this", "bad_runs_nchan",
                         "bad_runs_ceiling"])
            for r in table:
                wr.writerow([r["metric"], r["scenario"], r["param"], r["key"], r["ours"], r["nchan"], r["ceiling"],
                             r["ours_vs_nchan"], r["ours_vs_ceiling"], r["nchan_vs_ceiling"], r["target"], r["met"],
                             *[(r[s + "_checks"] or {}).get("bad_runs") for s in ("ours", "nchan", "ceiling")]])
        with open(os.path.join(self.resdir, "table.txt"), "w") as f:
            f.write(text + "\n")
        if self.want("fanout"):
            self.plot()

    def plot(self):
        gp = shutil.which("gnuplot")
        if not gp:
            log("bench: gnuplot not found, no plot")
            return
        dat = os.path.join(self.resdir, "fanout.dat")
        with open(dat, "w") as f:
            f.write("# subscribers this nchan ceiling (burst ms) this nchan ceiling (100 msgs span ms)\n")
            for n in self.p["fanout_n"]:
                vals = [self.median("fanout", n, s, "burst_fanout_med_ms") for s in ("ours", "nchan", "ceiling")]
                vals += [self.median("fanout", n, s, "stream_span_ms") for s in ("ours", "nchan", "ceiling")]
                f.write(str(n) + " " + " ".join("NaN" if v is None else f"{v:.3f}" for v in vals) + "\n")
        png = os.path.join(self.resdir, "fanout.png")
        xt = ", ".join(f"'{n // 1000}k' {n}" for n in self.p["fanout_n"])
        script = f"""
set terminal png size 1100,480
set output '{png}'
set datafile missing 'NaN'
set multiplot layout 1,2 title 'SSE fan-out over 2 nginx workers (median of {self.rounds} round(s))'
set key top left
set grid
set xlabel 'subscribers'
set ylabel 'ms'
set xtics ({xt})
set title '1-message burst: publish -> last delivery'
plot '{dat}' using 1:2 with linespoints lw 2 title 'this module', \\
     '' using 1:3 with linespoints lw 2 title 'nchan', \\
     '' using 1:4 with linespoints lw 2 dt 2 title 'epoll ceiling'
set title '100 messages at 1k msg/s: first publish -> last delivery'
set ylabel 'ms (log scale)'
set logscale y
plot '{dat}' using 1:5 with linespoints lw 2 title 'this module', \\
     '' using 1:6 with linespoints lw 2 title 'nchan', \\
     '' using 1:7 with linespoints lw 2 dt 2 title 'epoll ceiling'
unset multiplot
"""
        r = subprocess.run([gp], input=script, text=True, capture_output=True, timeout=60)
        if r.returncode != 0:
            log("bench: gnuplot failed: " + r.stderr.strip())
        else:
            log(f"bench: wrote {png}")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--loadgen", default=os.path.join(HERE, "out", "loadgen"))
    ap.add_argument("--module", default=os.path.abspath(os.path.join(HERE, "..", "build", "ngx_http_channels_module.so")))
    ap.add_argument("--nginx", default="/usr/sbin/nginx")
    ap.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma list of scenario groups: " + ",".join(GROUPS))
    ap.add_argument("--servers", help="comma list: ours,nchan (default: both when present)")
    ap.add_argument("--results", help="results directory (default bench/results)")
    args = ap.parse_args()
    args.loadgen = os.path.abspath(args.loadgen)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.only:
        bad = [g for g in args.only.split(",") if g not in GROUPS]
        if bad:
            sys.exit(f"bench: unknown scenario group(s) {','.join(bad)}; known: {','.join(GROUPS)}")
    if not os.access(args.loadgen, os.X_OK):
        sys.exit(f"bench: {args.loadgen} missing; run make -C bench loadgen")
    b = Bench(args)

    def on_signal(sig, _frame):
        for srv in b.servers.values():
            srv.stop()
        sys.exit(128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.exit(b.run())


if __name__ == "__main__":
    main()
