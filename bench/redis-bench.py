#!/usr/bin/env python3
"""Cross-host figures for channel_redis (issue 8), measured with bench/out/loadgen.

Starts a private redis-server (free loopback port, no persistence, temp dir), two nginx
hosts A and B joined to it (zone "bench", same shape as bench/conf/channels.conf plus
channel_redis), and one host S without Redis (the single-host baseline). Runs loadgen:

  hop latency: 1 SSE subscriber, 200 single-message bursts then 500 messages at 500 msg/s:
           S vs A->B (the cost of the trip through Redis without fan-out)
  latency: 1000 SSE subscribers, 20 single-message bursts then 200 messages at 500 msg/s
           - S: publish and subscribe on S (no Redis)
           - A->A: publish and subscribe on A (through Redis, same host)
           - A->B: publish on A, subscribers on B (cross host)
  publishes/s: flat out, 16 keep-alive connections, 3 s, 0 subscribers: S vs A;
           and with 100 SSE subscribers on B (A->B) vs 100 on S.

Each scenario runs ROUNDS times (default 3); the median of each figure is printed with the
loadgen command lines. Every process started here is stopped by its PID.

usage: redis-bench.py [--rounds N] [--module PATH] [--nginx PATH] [--keep]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LOADGEN = os.path.join(REPO, "bench/out/loadgen")

CONF = """
load_module {module};
worker_processes 2;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 19500; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_buffer_size 64k;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    channel_zone zone=bench:64m history=1000 ttl=10m;
    {redis}
    channel_first_message newest;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location ~ ^/sub/(?<ch>[\\w.:-]+)$ {{ sse_channel $ch; }}
        location ~ ^/lp/(?<ch>[\\w.:-]+)$  {{ longpoll_channel $ch; }}
        location ~ ^/pub/(?<ch>[\\w.:-]+)$ {{ publish_channel $ch; }}
        location = /stats {{ channel_stats; }}
    }}
}}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for " + what)


class Redis:
    def __init__(self, top):
        self.dir = os.path.join(top, "redis")
        os.makedirs(self.dir)
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")],
            stdin=subprocess.DEVNULL)
        wait(lambda: port_open(self.port), 10, "redis-server")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Nginx:
    def __init__(self, top, name, module, nginx_bin, redis_url=None):
        self.prefix = os.path.join(top, name)
        os.makedirs(self.prefix)
        self.nginx = nginx_bin
        self.port = free_port()
        mod = os.path.join(self.prefix, os.path.basename(module))
        shutil.copyfile(module, mod)
        redis = f"channel_redis zone=bench url={redis_url} prefix=bench:;" if redis_url else ""
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(module=mod, prefix=self.prefix, port=self.port, redis=redis))
        self.err = os.path.join(self.prefix, "error.log")
        subprocess.run([nginx_bin, "-p", self.prefix + "/", "-e", self.err, "-c", self.conf], check=True)
        pidfile = os.path.join(self.prefix, "nginx.pid")
        wait(lambda: os.path.exists(pidfile) and port_open(self.port), 10, name)
        with open(pidfile) as f:
            self.master = int(f.read())
        if redis_url:
            # 2 workers x (command + log tail) connections
            wait(lambda: open(self.err).read().count("connected to redis") >= 4, 10, name + " redis links")

    def stop(self):
        subprocess.run([self.nginx, "-p", self.prefix + "/", "-e", self.err, "-c", self.conf, "-s", "stop"])
        wait(lambda: not os.path.exists(f"/proc/{self.master}") or
             open(f"/proc/{self.master}/stat").read().split()[2] == "Z", 15, "nginx stop")

    def problems(self):
        bad = ("[alert]", "[emerg]", "[crit]", "exited on signal")
        return [l.strip() for l in open(self.err, errors="replace") if any(b in l for b in bad)]


def run_loadgen(args, log):
    cmd = [LOADGEN] + args
    log.append(" ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    line = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 and not line:
        raise RuntimeError(f"loadgen failed: {r.stderr[-2000:]}")
    return json.loads(line[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--module", default=os.path.join(REPO, "build/ngx_http_channels_module.so"))
    ap.add_argument("--nginx", default="/usr/sbin/nginx")
    ap.add_argument("--keep", action="store_true")
    o = ap.parse_args()
    if not os.path.exists(LOADGEN):
        subprocess.run(["make", "-C", os.path.join(REPO, "bench"), "out/loadgen"], check=True)

    import hashlib
    with open(o.module, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    print(f"module {o.module} mtime {time.ctime(os.path.getmtime(o.module))} sha256 {digest}", flush=True)
    top = tempfile.mkdtemp(prefix="redis-bench-")
    os.chmod(top, 0o755)
    started = []
    cmds = []
    results = {}
    try:
        redis = Redis(top)
        started.append(redis)
        url = f"redis://127.0.0.1:{redis.port}"
        A = Nginx(top, "A", o.module, o.nginx, url)
        started.append(A)
        B = Nginx(top, "B", o.module, o.nginx, url)
        started.append(B)
        S = Nginx(top, "S", o.module, o.nginx)
        started.append(S)

        n = 0

        def chan():
            nonlocal n
            n += 1
            return f"c{n}"

        lat = ["sse", "--subs", "1000", "--bursts", "20", "--msgs", "200", "--rate", "500",
               "--drain", "5", "--subs-wait", "2"]
        hop = ["sse", "--subs", "1", "--bursts", "200", "--msgs", "500", "--rate", "500", "--drain", "5",
               "--subs-wait", "2"]
        pub = ["publish", "--duration", "3", "--pub-conns", "16", "--drain", "5", "--subs-wait", "2"]
        scen = {
            "hop latency, 1 subscriber, S (no Redis)": lambda: hop + ["--port", str(S.port), "--channel", chan()],
            "hop latency, 1 subscriber, A->B (cross host)": lambda: hop + ["--port", str(B.port), "--pub-port",
                                                                        str(A.port), "--channel", chan()],
            "latency S (no Redis)": lambda: lat + ["--port", str(S.port), "--channel", chan()],
            "latency A->A (Redis, same host)": lambda: lat + ["--port", str(A.port), "--channel", chan()],
            "latency A->B (Redis, cross host)": lambda: lat + ["--port", str(B.port), "--pub-port", str(A.port),
                                                            "--channel", chan()],
            "publish S, 0 subs": lambda: pub + ["--port", str(S.port), "--channel", chan()],
            "publish A, 0 subs": lambda: pub + ["--port", str(A.port), "--channel", chan()],
            "publish S, 100 subs on S": lambda: pub + ["--subs", "100", "--port", str(S.port), "--channel", chan()],
            "publish A, 100 subs on B": lambda: pub + ["--subs", "100", "--port", str(B.port),
                                                       "--pub-port", str(A.port), "--channel", chan()],
        }
        for rnd in range(o.rounds):
            for name, args in scen.items():
                r = run_loadgen(args(), cmds)
                results.setdefault(name, []).append(r)
                print(f"round {rnd + 1} {name}: ok={r.get('ok')} lost={r.get('lost')} dup={r.get('dup')} "
                      f"pub_rate={r.get('pub_rate')} burst p50/p99={r.get('burst_lat_p50_ms')}/"
                      f"{r.get('burst_lat_p99_ms')} stream p50/p99={r.get('stream_lat_p50_ms')}/"
                      f"{r.get('stream_lat_p99_ms')}", flush=True)
    finally:
        for p in reversed(started):
            try:
                p.stop()
            except Exception as e:  # keep stopping the others
                print("stop failed:", e, file=sys.stderr)
        probs = {x.prefix: x.problems() for x in started if isinstance(x, Nginx)}

    def med(name, key):
        v = [r.get(key) for r in results.get(name, []) if isinstance(r.get(key), (int, float))]
        return statistics.median(v) if v else None

    print("\nmedians over %d round(s):" % o.rounds)
    fields = [("burst_lat_p50_ms", "1-msg burst latency p50 ms"), ("burst_lat_p99_ms", "1-msg burst latency p99 ms"),
              ("burst_fanout_med_ms", "1-msg burst publish->last delivery ms"),
              ("stream_lat_p50_ms", "200 msgs @500/s latency p50 ms"), ("stream_lat_p99_ms", "200 msgs @500/s latency p99 ms"),
              ("pub_rate", "publishes/s"), ("pub_lat_p50_ms", "publish answer p50 ms"),
              ("pub_lat_p99_ms", "publish answer p99 ms")]
    for name, runs in results.items():
        bad = [r for r in runs if not r.get("ok")]
        figs = ", ".join(f"{label} {med(name, k):.3g}" for k, label in fields if med(name, k) is not None)
        print(f"  {name}: {figs}" + (f"  [{len(bad)} run(s) not ok]" if bad else ""))
        for r in bad:
            print("     not ok:", {k: r.get(k) for k in ("lost", "dup", "ooo", "id_regress", "failed",
                                                          "other_event_types", "pub_status", "sub_status")})
    print("\nloadgen commands (ports are per run):")
    for c in dict.fromkeys(x.split(" --channel")[0] for x in cmds):
        print("  " + c)
    for prefix, pr in probs.items():
        if pr:
            print(f"log problems in {prefix}:", *pr[:5], sep="\n  ")
    with open(os.path.join(top, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if o.keep:
        print("kept", top)
    else:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
