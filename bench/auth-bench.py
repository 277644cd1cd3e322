#!/usr/bin/env python3
"""What channel_auth jwt costs (issue 15), against no auth and against auth_request.

One nginx (2 workers, this module) serves the same channel behind five locations: no auth
(also with the RS256 tokens sent and ignored: "none+token", the cost of the bigger requests);
channel_auth jwt with HS256, RS256 and ES256 tokens (64 distinct tokens per algorithm, as
from 64 users, all verified once per worker and then taken from the cache); and
auth_request to a local backend (a `return 204` server block of the same nginx, over
keep-alive upstream connections: the cheapest backend there is; a real one costs more).
Keys come from the openssl command line, tokens from the npm jose package
(t/js/jwt-mint.mjs).

  long-poll loop: 16 keep-alive connections send long polls answered at once (a cursor
      with a message after it), back to back: answers/s and the nginx workers' CPU time
      (utime+stime from /proc) per answer
  subscribes: 16 slots each connect, subscribe to the SSE stream, read its header and
      first bytes, close, again: subscribes/s and CPU per subscribe
  first verification: bench/out/jwt_verify_bench (src/channels outside nginx) for every
      algorithm: microseconds per first verification and per cached token

The load generator is bench/out/auth_load (auth_load.cpp). Each round runs SLICES cycles;
a cycle runs every variant for SECONDS, back to back, the order rotating. The table gives
medians, and each variant's CPU per answer as the median of its ratio to the no-auth run of
the same cycle (the machine is shared: its load drifts; the target for a cached token is at
most 1.15). Every process started here is stopped by its PID.

usage: auth-bench.py [--rounds N] [--slices K] [--seconds S] [--module PATH] [--nginx PATH] [--keep]
"""
import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
RESULTS = os.path.join(HERE, "results")
CLK_TCK = os.sysconf("SC_CLK_TCK")
VARIANTS = ["none", "none+token", "HS256", "RS256", "ES256", "auth_request"]
CONNS = 16

CONF = """
load_module {module};
worker_processes 2;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    channel_zone zone=bench:16m history=100 ttl=10m;
    channel_jwt_key {keys}/rsa.pub;
    channel_jwt_key {keys}/ec.pub;
    channel_jwt_key {keys}/oct.jwks;
    sse_ping 0;

    upstream authz {{
        server 127.0.0.1:{auth_port};
        keepalive 32;
    }}

    # Exact-match locations with the channel written out: every variant finds its location
    # at the same cost (regex locations are tried in order, which would favour the first).
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location = /none/lp  {{ longpoll_channel b; }}
        location = /none/sub {{ sse_channel b; }}
        location = /jwt/lp   {{ channel_auth jwt; longpoll_channel b; }}
        location = /jwt/sub  {{ channel_auth jwt; sse_channel b; }}
        location = /ar/lp    {{ auth_request /_auth; longpoll_channel b; }}
        location = /ar/sub   {{ auth_request /_auth; sse_channel b; }}
        location = /_auth {{
            internal;
            proxy_pass http://authz/check;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        location ~ ^/pub/(?<ch>\\w+)$ {{ publish_channel $ch; }}
    }}
    server {{
        listen 127.0.0.1:{auth_port};
        location = /check {{ return 204; }}
    }}
}}
"""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def build_tools():
    """auth_load (libc only) and jwt_verify_bench (src/channels + libcrypto), when stale."""
    os.makedirs(OUT, exist_ok=True)
    pure = [os.path.join(REPO, "src/channels", f) for f in sorted(os.listdir(os.path.join(REPO, "src/channels")))
            if f.endswith((".cpp", ".h"))]
    tools = [("auth_load", [os.path.join(HERE, "auth_load.cpp")], [], []),
             ("jwt_verify_bench", [os.path.join(HERE, "jwt_verify_bench.cpp")] +
              [p for p in pure if p.endswith(".cpp")], ["-I" + os.path.join(REPO, "src")], ["-lcrypto"])]
    for name, srcs, incs, libs in tools:
        out = os.path.join(OUT, name)
        newest = max(os.path.getmtime(p) for p in srcs + pure)
        if os.path.exists(out) and os.path.getmtime(out) >= newest:
            continue
        cmd = ["g++", "-std=c++17", "-O2", "-g", "-Wall", "-Wextra", "-Werror"] + incs + ["-o", out] + srcs + libs
        log(" ".join(cmd))
        subprocess.run(cmd, check=True)


def make_keys(d):
    def run(*cmd):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", f"{d}/rsa.pem")
    run("openssl", "pkey", "-in", f"{d}/rsa.pem", "-pubout", "-out", f"{d}/rsa.pub")
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{d}/ec.pem")
    run("openssl", "pkey", "-in", f"{d}/ec.pem", "-pubout", "-out", f"{d}/ec.pub")
    secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    with open(f"{d}/oct.jwks", "w") as f:
        json.dump({"keys": [{"kty": "oct", "k": secret}]}, f)
    for p in os.listdir(d):
        os.chmod(os.path.join(d, p), 0o644)
    return secret


def mint_tokens(d, secret, users):
    """64 users' tokens per algorithm, minted by npm jose; one file per algorithm."""
    subprocess.run(["sh", os.path.join(REPO, "t/js/ensure-deps.sh")], check=True)
    exp = int(time.time()) + 24 * 3600
    keys = {"HS256": {"secret": secret}, "RS256": {"pkcs8": f"{d}/rsa.pem"}, "ES256": {"pkcs8": f"{d}/ec.pem"}}
    spec = {"tokens": {}}
    for alg, key in keys.items():
        for u in range(users):
            spec["tokens"][f"{alg}-{u}"] = dict(key, alg=alg, claims={
                "sub": f"user-{u}", "exp": exp, "channels": {"subscribe": ["b", f"user.{u}.*"]}})
    with open(f"{d}/spec.json", "w") as f:
        json.dump(spec, f)
    r = subprocess.run(["node", os.path.join(REPO, "t/js/jwt-mint.mjs"), f"{d}/spec.json"],
                       check=True, capture_output=True, text=True)
    tokens = json.loads(r.stdout)
    files = {}
    for alg in keys:
        files[alg] = f"{d}/{alg}.tokens"
        with open(files[alg], "w") as f:
            for u in range(users):
                f.write(tokens[f"{alg}-{u}"] + "\n")
    return files


class Nginx:
    def __init__(self, top, module, nginx_bin, keys):
        self.prefix = os.path.join(top, "nginx")
        os.makedirs(self.prefix)
        self.nginx = nginx_bin
        self.port = free_port()
        mod = os.path.join(self.prefix, os.path.basename(module))
        shutil.copyfile(module, mod)   # a rebuild during the run does not touch the mapped file
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(module=mod, prefix=self.prefix, port=self.port, auth_port=free_port(), keys=keys))
        self.err = os.path.join(self.prefix, "error.log")
        subprocess.run([nginx_bin, "-p", self.prefix + "/", "-e", self.err, "-c", self.conf], check=True)
        pidfile = os.path.join(self.prefix, "nginx.pid")
        wait(lambda: os.path.exists(pidfile) and port_open(self.port), 10, "nginx")
        with open(pidfile) as f:
            self.master = int(f.read())

    def workers(self):
        with open(f"/proc/{self.master}/task/{self.master}/children") as f:
            return [int(p) for p in f.read().split()]

    def cpu_seconds(self):
        total = 0
        for pid in self.workers():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])   # utime, stime
        return total / CLK_TCK

    def publish(self, channel, body):
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(f"POST /pub/{channel} HTTP/1.1\r\nHost: b\r\nContent-Length: {len(body)}\r\n"
                      f"Connection: close\r\n\r\n{body}".encode())
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return json.loads(data.split(b"\r\n\r\n", 1)[1])["id"]

    def stop(self):
        subprocess.run([self.nginx, "-p", self.prefix + "/", "-e", self.err, "-c", self.conf, "-s", "stop"])
        wait(lambda: not os.path.exists(f"/proc/{self.master}") or
             open(f"/proc/{self.master}/stat").read().split()[2] == "Z", 15, "nginx stop")

    def problems(self):
        bad = ("[alert]", "[emerg]", "[crit]", "exited on signal")
        return [l.strip() for l in open(self.err, errors="replace") if any(b in l for b in bad)]


def run_load(ng, mode, variant, tokens, seconds, cursor, cmds):
    prefix = {"none": "none", "none+token": "none", "auth_request": "ar"}.get(variant, "jwt")
    path = f"/{prefix}/lp?last_event_id={cursor}" if mode == "lp" else f"/{prefix}/sub"
    cmd = [os.path.join(OUT, "auth_load"), mode, "--port", str(ng.port), "--path", path,
           "--conns", str(CONNS), "--seconds", str(seconds)]
    if variant in tokens:
        cmd += ["--tokens", tokens[variant]]
    elif variant == "none+token":   # the same bytes on the wire as RS256, nobody reads them
        cmd += ["--tokens", tokens["RS256"]]
    else:
        cmd += ["--auth", "none"]
    cmds.setdefault(f"{mode} {variant}", " ".join(cmd))
    cpu0 = ng.cpu_seconds()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    cpu = ng.cpu_seconds() - cpu0
    if r.returncode != 0:
        raise RuntimeError(f"auth_load failed: {r.stderr[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    ok = res["status"].get("200", 0)
    res["rate"] = ok / res["seconds"]
    res["cpu_us"] = cpu * 1e6 / ok if ok else None
    res["bad"] = res["answers"] - ok + res["errors"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1)
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--module", default=os.path.join(REPO, "build/ngx_http_channels_module.so"))
    ap.add_argument("--nginx", default="/usr/sbin/nginx")
    ap.add_argument("--keep", action="store_true")
    o = ap.parse_args()
    build_tools()
    top = tempfile.mkdtemp(prefix="auth-bench-")
    os.chmod(top, 0o755)
    keys = os.path.join(top, "keys")
    os.makedirs(keys)
    os.chmod(keys, 0o755)
    secret = make_keys(keys)
    tokens = mint_tokens(keys, secret, 64)

    log("first verification, per algorithm (bench/out/jwt_verify_bench) ...")
    r = subprocess.run([os.path.join(OUT, "jwt_verify_bench")], check=True, capture_output=True, text=True)
    micro = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]

    ng = Nginx(top, o.module, o.nginx, keys)
    results, cmds, problems = {}, {}, []
    try:
        cursor = ng.publish("b", "x" * 64)
        ng.publish("b", "y" * 64)   # the message every long poll gets at once
        for mode in ("lp", "sub"):
            for v in VARIANTS:   # warm-up: every worker verifies every token once
                run_load(ng, mode, v, tokens, 1, cursor, cmds)
        # Slices of every variant back to back, the order rotating: each variant's CPU is
        # compared with the no-auth slice of the same cycle, so a change in the machine's
        # load (it is shared) moves both.
        cycle = 0
        for rnd in range(o.rounds):
            for sl in range(o.slices):
                for mode in ("lp", "sub"):
                    order = VARIANTS[cycle % len(VARIANTS):] + VARIANTS[:cycle % len(VARIANTS)]
                    got = {v: run_load(ng, mode, v, tokens, o.seconds, cursor, cmds) for v in order}
                    for v, res in got.items():
                        res["ratio"] = res["cpu_us"] / got["none"]["cpu_us"] if res["cpu_us"] else None
                        results.setdefault((mode, v), []).append(res)
                    log(f"round {rnd + 1}.{sl + 1} {mode:3}: " + "  ".join(
                        f"{v} {got[v]['rate']:.0f}/s {got[v]['cpu_us']:.1f}us" for v in VARIANTS))
                cycle += 1
    finally:
        ng.stop()
        problems = ng.problems()

    def med(mode, v, key):
        vals = [r[key] for r in results[(mode, v)] if r[key] is not None]
        return statistics.median(vals) if vals else float("nan")

    lines = ["channel_auth jwt, medians over %d round(s) x %d slice(s) of %gs per variant, %d connections, "
             "2 workers" % (o.rounds, o.slices, o.seconds, CONNS),
             "(CPU vs none: the median of each slice's ratio to the no-auth slice of the same cycle)", ""]
    target_ok = True
    for mode, title, unit in (("lp", "long-poll loop (answered at once, keep-alive)", "answers/s"),
                              ("sub", "SSE subscribes (connect, subscribe, first bytes, close)", "subscribes/s")):
        lines.append(title)
        lines.append(f"  {'':14}{unit:>14}{'CPU us each':>14}{'CPU vs none':>13}")
        for v in VARIANTS:
            ratio = med(mode, v, "ratio")
            label = v if v in ("none", "none+token", "auth_request") else f"jwt {v}"
            lines.append(f"  {label:14}{med(mode, v, 'rate'):14.0f}{med(mode, v, 'cpu_us'):14.1f}{ratio:12.2f}x")
            if v in ("HS256", "RS256", "ES256") and ratio > 1.15:
                target_ok = False
        lines.append("")
    lines.append("first verification / cached token, outside nginx (us)")
    for m in micro:
        lines.append(f"  {m['alg']:8}{m['first_us']:10.1f} first{m['cached_us']:8.2f} cached   ({m['token_bytes']} bytes)")
    lines.append("")
    lines.append("cached-token target (CPU <= 1.15x no auth): " + ("met" if target_ok else "NOT met"))
    bad = sum(r["bad"] for rs in results.values() for r in rs)
    if bad:
        lines.append(f"{bad} answers were not 200 or failed")
    if problems:
        lines.append("log problems:")
        lines += ["  " + p for p in problems[:5]]
    lines.append("")
    lines.append("commands:")
    lines += [f"  {c}" for c in cmds.values()]
    text = "\n".join(lines)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "auth-table.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(RESULTS, "auth-bench.json"), "w") as f:
        json.dump({"rounds": o.rounds, "slices": o.slices, "seconds": o.seconds, "micro": micro,
                   "runs": {f"{m} {v}": rs for (m, v), rs in results.items()}}, f, indent=1)
    if o.keep:
        print("kept", top)
    else:
        shutil.rmtree(top, ignore_errors=True)
    sys.exit(1 if bad or problems else 0)


if __name__ == "__main__":
    main()
