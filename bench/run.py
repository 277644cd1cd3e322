#!/usr/bin/env python3
"""Benchmark driver: this module against nchan and a raw epoll ceiling.

Starts one nginx with the channels module (conf/channels.conf) and one with
nchan (conf/nchan.conf), each in its own prefix under out/, runs the
scenarios of issue 5 with out/loadgen alternating A/B over rounds, and writes
results/results.json, results/results.csv and results/fanout.png. See
README.md for what each scenario measures.
"""
import argparse
import csv
import json
import os
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

FULL = {
    "fanout_n": [1000, 5000, 10000, 20000],
    "bursts": 10,
    "stream_msgs": 100,
    "stream_rate": 1000,
    "mem_n": 10000,
    "lp_n": 1000,
    "lp_rate": 200,
    "lp_duration": 5,
    "pub_duration": 3,
    "pub_subs": [0, 100, 10000],
    "pub_channels": 10000,
    "pub_chan_msgs": 50000,  # 5 per channel: both zones (64 MiB) hold them without evicting
    "pub_big_msgs": 100,   # with >= 1000 subscribers: a fixed batch, not a duration
}
QUICK = dict(FULL, fanout_n=[1000, 5000], bursts=5, mem_n=2000, lp_n=200, lp_duration=3,
             pub_duration=2, pub_subs=[0, 100, 1000], pub_channels=2000, pub_chan_msgs=10000, pub_big_msgs=100)

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
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_kb(pid):
    out = {"Rss": 0, "Pss": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, rest = line.partition(":")
                if k in out:
                    out[k] = int(rest.split()[0])
    except OSError:
        pass
    return out


class Nginx:
    """One nginx instance in its own prefix, started and stopped by PID."""

    def __init__(self, name, template, nginx_bin, module, outdir):
        self.name = name
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
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: nginx did not come up on port {self.port}")

    def workers(self):
        return children_of(self.master) if self.master else []

    def cpu_s(self):
        return sum(proc_cpu_s(p) for p in self.workers())

    def mem_kb(self):
        tot = {"Rss": 0, "Pss": 0}
        for p in self.workers():
            m = proc_mem_kb(p)
            tot["Rss"] += m["Rss"]
            tot["Pss"] += m["Pss"]
        return tot

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


class Bench:
    def __init__(self, args):
        self.args = args
        self.p = QUICK if args.quick else FULL
        self.rounds = 1 if args.quick else args.rounds
        self.outdir = os.path.join(HERE, "out")
        self.resdir = args.results or os.path.join(HERE, "results")
        os.makedirs(self.outdir, exist_ok=True)
        os.makedirs(self.resdir, exist_ok=True)
        self.runs = []
        self.src_net = int(time.time()) % 200
        self.servers = {}
        self.notes = []
        if args.module and os.path.exists(args.module):
            self.servers["ours"] = Nginx("ours", os.path.join(HERE, "conf", "channels.conf"),
                                         args.nginx, args.module, self.outdir)
        else:
            self.notes.append(f"module {args.module!r} not found: this module was not measured")
        if os.path.exists(NCHAN_MODULE):
            self.servers["nchan"] = Nginx("nchan", os.path.join(HERE, "conf", "nchan.conf"),
                                          args.nginx, NCHAN_MODULE, self.outdir)
        else:
            self.notes.append(f"{NCHAN_MODULE} not found: nchan was not measured")
        if args.servers:
            keep = args.servers.split(",")
            self.servers = {k: v for k, v in self.servers.items() if k in keep}
        self.flip = False
        self.all_servers = dict(self.servers)

    # ---- one load generator run ------------------------------------------------------

    def loadgen(self, mode, server, opts, timeout):
        self.src_net += 1
        cmd = [self.args.loadgen, mode] + [str(o) for o in opts] + [
            "--sync", "--src-net", str(self.src_net), "--timeout", str(timeout)]
        srv = self.servers.get(server)
        if srv:
            cmd += ["--server", server, "--port", str(srv.port)]
        errpath = os.path.join(self.outdir, "loadgen.err")
        measures = {}
        result = None
        with open(errpath, "a") as err:
            err.write(" ".join(cmd) + "\n")
            err.flush()
            before_mem = srv.mem_kb() if srv else None
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
                    if ev.get("event") == "ready":
                        if srv:
                            measures["mem_ready"] = srv.mem_kb()
                            measures["cpu_ready"] = srv.cpu_s()
                        measures["t_ready"] = time.time()
                        proc.stdin.write(b"go\n")
                        proc.stdin.flush()
                    elif ev.get("event") == "done":
                        if srv:
                            measures["cpu_done"] = srv.cpu_s()
                        measures["t_done"] = time.time()
                        proc.stdin.write(b"go\n")
                        proc.stdin.flush()
                    elif ev.get("event") == "result":
                        result = ev
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if result is None:
            return {"ok": False, "error": f"no result (exit {proc.returncode}); see out/loadgen.err"}
        if srv and "mem_ready" in measures and before_mem:
            n = max(1, result.get("ready", 0))
            result["mem_rss_kb_per_sub"] = (measures["mem_ready"]["Rss"] - before_mem["Rss"]) / n
            result["mem_pss_kb_per_sub"] = (measures["mem_ready"]["Pss"] - before_mem["Pss"]) / n
        if srv and "cpu_done" in measures:
            cpu = measures["cpu_done"] - measures["cpu_ready"]
            result["server_cpu_s"] = cpu
            if result.get("received"):
                result["cpu_us_per_delivery"] = cpu * 1e6 / result["received"]
            if result.get("published"):
                result["cpu_us_per_publish"] = cpu * 1e6 / result["published"]
        return result

    def record(self, rnd, scenario, param, server, res):
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
        key = {"fanout": "burst_fanout_med_ms", "mem_sse": "mem_pss_kb_per_sub",
               "mem_lp": "mem_pss_kb_per_sub", "longpoll": "deliveries_per_s"}.get(scenario, "pub_rate")
        log(f"  {time.time() - self.t0:5.0f}s [r{rnd}] {scenario:8} {str(param):>6} {server:7} {key}={res.get(key)} {chk}")

    def order(self):
        names = [n for n in ("ours", "nchan") if n in self.servers and self.servers[n].master]
        self.flip = not self.flip
        return list(reversed(names)) if self.flip else names

    def restart(self, names=None):
        for n in names or list(self.servers):
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
            self.record(rnd, kind, n, name, self.loadgen(mode, name, opts, 120))

    def longpoll(self, rnd):
        p = self.p
        opts = ["--subs", p["lp_n"], "--rate", p["lp_rate"], "--duration", p["lp_duration"],
                "--pub-conns", PUB_CONNS, "--channel", f"lp{rnd}", "--drain", 5]
        for name in self.order():
            self.record(rnd, "longpoll", p["lp_n"], name, self.loadgen("longpoll", name, opts, 120))

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

    def run(self):
        t0 = self.t0 = time.time()
        log(f"bench: servers {', '.join(self.servers) or 'none'} + ceiling; "
            f"{self.rounds} round(s){' (quick)' if self.args.quick else ''}")
        for n in self.notes:
            log("bench: " + n)
        only = set(self.args.only.split(",")) if self.args.only else None
        want = lambda s: only is None or s in only
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
                    self.longpoll(rnd)
                if want("publish"):
                    for s in self.p["pub_subs"]:
                        self.publish(rnd, s)
                    self.restart()  # fresh zones: the channels scenario measures creating them
                    self.publish(rnd, 0, self.p["pub_channels"])
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
        vals = [v for v in vals if isinstance(v, (int, float))]
        return statistics.median(vals) if vals else None

    def checks(self, scenario, param, server):
        rs = [r for r in self.runs
              if r["scenario"] == scenario and r["param"] == param and r["server_name"] == server]
        if not rs:
            return None
        bad = sum(1 for r in rs if not r.get("ok"))
        lost = sum(r.get("lost", 0) or 0 for r in rs)
        dup = sum(r.get("dup", 0) or 0 for r in rs)
        ooo = sum(r.get("ooo", 0) or 0 for r in rs)
        return {"runs": len(rs), "bad_runs": bad, "lost": lost, "dup": dup, "ooo": ooo}

    def rows(self):
        p = self.p
        rows = []
        for n in p["fanout_n"]:
            k = f"{n // 1000}k" if n >= 1000 else str(n)
            rows += [
                (f"fan-out {k} SSE: 1-msg burst, publish->last delivery (ms)", "fanout", n, "burst_fanout_med_ms", "lower"),
                (f"fan-out {k} SSE: 1-msg burst latency p50 (ms)", "fanout", n, "burst_lat_p50_ms", "lower"),
                (f"fan-out {k} SSE: 1-msg burst latency p99 (ms)", "fanout", n, "burst_lat_p99_ms", "lower"),
                (f"fan-out {k} SSE: 100 msgs @1k/s, first publish->last delivery (ms)", "fanout", n, "stream_span_ms", "lower"),
                (f"fan-out {k} SSE: 100 msgs @1k/s latency p50 (ms)", "fanout", n, "stream_lat_p50_ms", "lower"),
                (f"fan-out {k} SSE: 100 msgs @1k/s latency p99 (ms)", "fanout", n, "stream_lat_p99_ms", "lower"),
                (f"fan-out {k} SSE: server CPU us/delivery", "fanout", n, "cpu_us_per_delivery", "lower"),
            ]
        m = p["mem_n"]
        rows += [
            (f"idle memory, {m} SSE subscribers: RSS KiB/subscriber", "mem_sse", m, "mem_rss_kb_per_sub", "lower"),
            (f"idle memory, {m} SSE subscribers: PSS KiB/subscriber", "mem_sse", m, "mem_pss_kb_per_sub", "lower"),
            (f"idle memory, {m} long-poll subscribers: RSS KiB/subscriber", "mem_lp", m, "mem_rss_kb_per_sub", "lower"),
            (f"idle memory, {m} long-poll subscribers: PSS KiB/subscriber", "mem_lp", m, "mem_pss_kb_per_sub", "lower"),
            (f"long-poll {p['lp_n']} loops @{p['lp_rate']} msg/s: deliveries/s", "longpoll", p["lp_n"], "deliveries_per_s", "higher"),
            (f"long-poll {p['lp_n']} loops @{p['lp_rate']} msg/s: latency p99 (ms)", "longpoll", p["lp_n"], "stream_lat_p99_ms", "lower"),
            (f"long-poll {p['lp_n']} loops @{p['lp_rate']} msg/s: server CPU us/delivery", "longpoll", p["lp_n"], "cpu_us_per_delivery", "lower"),
        ]
        for s in p["pub_subs"]:
            rows.append((f"publishes/s, {s} subscribers", "publish", s, "pub_rate", "higher"))
        rows.append(("server CPU us/publish, 0 subscribers", "publish", 0, "cpu_us_per_publish", "lower"))
        rows.append((f"publishes/s, {p['pub_channels']} distinct channels", "pub_chan", p["pub_channels"], "pub_rate", "higher"))
        return rows

    def report(self):
        for r in self.runs:
            if isinstance(r.get("stream_span_s"), (int, float)):
                r["stream_span_ms"] = r["stream_span_s"] * 1000
        table = []
        for label, scen, param, metric, better in self.rows():
            row = {"metric": label, "scenario": scen, "param": param, "key": metric, "better": better}
            for s in ("ours", "nchan", "ceiling"):
                row[s] = self.median(scen, param, s, metric)
                row[s + "_checks"] = self.checks(scen, param, s)
            o, nc, ce = row["ours"], row["nchan"], row["ceiling"]
            row["ours_vs_nchan"] = o / nc if o is not None and nc else None
            row["ours_vs_ceiling"] = o / ce if o is not None and ce else None
            row["nchan_vs_ceiling"] = nc / ce if nc is not None and ce else None
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
        w = max(len(r["metric"]) for r in table)
        lines.append(f"{'metric (median of ' + str(self.rounds) + ' round(s))':<{w}} | {'this':>9} | {'nchan':>9} | "
                     f"{'ceiling':>9} | {'this/nchan':>10} | {'this/ceil':>9} | {'nchan/ceil':>10}")
        lines.append("-" * len(lines[0]))
        for r in table:
            lines.append(f"{r['metric']:<{w}} | {fmt(r['ours']) + flag(r['ours_checks']):>9} | "
                         f"{fmt(r['nchan']) + flag(r['nchan_checks']):>9} | "
                         f"{fmt(r['ceiling']) + flag(r['ceiling_checks']):>9} | "
                         f"{fmt(r['ours_vs_nchan']):>10} | {fmt(r['ours_vs_ceiling']):>9} | "
                         f"{fmt(r['nchan_vs_ceiling']):>10}")
        totals = {}
        for r in self.runs:
            t = totals.setdefault(r["server_name"], {"runs": 0, "bad_runs": 0, "lost": 0, "dup": 0, "ooo": 0,
                                                     "id_regress": 0, "failed": 0})
            t["runs"] += 1
            t["bad_runs"] += 0 if r.get("ok") else 1
            for k in ("lost", "dup", "ooo", "id_regress", "failed"):
                t[k] += r.get(k, 0) or 0
        lines.append("")
        lines.append("checks over all runs (a fast wrong answer is a failure; '!' above marks a metric with a bad run):")
        for s, t in totals.items():
            lines.append(f"  {s:8} runs={t['runs']} bad_runs={t['bad_runs']} lost={t['lost']} dup={t['dup']} "
                         f"out_of_order={t['ooo']} id_regress={t['id_regress']} failed_connections={t['failed']}")
        problems = {n: s.problems for n, s in self.all_servers.items() if s.problems}
        for n, pr in problems.items():
            lines.append(f"  {n} error.log: {len(pr)} alert/emerg/crit/signal line(s), first: {pr[0]}")
        for n in self.notes:
            lines.append("  note: " + n)
        lines.append(f"elapsed {self.elapsed:.0f}s; command: make -C bench{' quick' if self.args.quick else ''}")
        text = "\n".join(lines)
        print(text)

        with open(os.path.join(self.resdir, "results.json"), "w") as f:
            json.dump({"environment": environment(self.args.nginx), "quick": self.args.quick, "rounds": self.rounds, "elapsed_s": self.elapsed,
                       "params": self.p, "table": table, "checks": totals, "server_problems": problems,
                       "notes": self.notes, "runs": self.runs}, f, indent=1)
        with open(os.path.join(self.resdir, "results.csv"), "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["metric", "scenario", "param", "key", "this", "nchan", "ceiling", "this_vs_nchan",
                         "this_vs_ceiling", "nchan_vs_ceiling", "bad_runs_this", "bad_runs_nchan", "bad_runs_ceiling"])
            for r in table:
                wr.writerow([r["metric"], r["scenario"], r["param"], r["key"], r["ours"], r["nchan"], r["ceiling"],
                             r["ours_vs_nchan"], r["ours_vs_ceiling"], r["nchan_vs_ceiling"],
                             *[(r[s + "_checks"] or {}).get("bad_runs") for s in ("ours", "nchan", "ceiling")]])
        with open(os.path.join(self.resdir, "table.txt"), "w") as f:
            f.write(text + "\n")
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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma list of scenario groups: mem,fanout,longpoll,publish")
    ap.add_argument("--servers", help="comma list: ours,nchan (default: both when present)")
    ap.add_argument("--results", help="results directory (default bench/results)")
    args = ap.parse_args()
    args.loadgen = os.path.abspath(args.loadgen)
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
