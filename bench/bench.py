#!/usr/bin/env python3
"""Load benchmark of microservice2 against peers, driven by bench/run.

Starts each server once, then drives wrk (or k6) against them in alternating rounds
(A B A B ...), reading each server's CPU time and RSS from /proc before and after every round.
Prints a table of medians and ratios against the first server, and writes
bench/results/<mode>.json plus a section of bench/RESULTS.md with an SVG chart.

Servers ("variants") are given as NAME=KIND[ ARGS...]: KIND is `m2` (this repository's release
binary, ARGS are its flags), `m2-bin:PATH` (another build of it), `nginx` (a static file
with the same body and headers) or `chain` (`microservice2 gateway`, ARGS its flags, in front
of a serve-mode upstream; load goes to /v1/user and CPU is also reported per process). The
first variant is the one the ratios are about.

With --tls every server serves HTTPS with one ECDSA P-256 certificate made for the run (nginx
with TLS 1.3 only, microservice2 with --tls-cert/--tls-key); the protocol and cipher each
negotiates are checked to be the same, and two loads run, keep-alive and a new connection per
request, with ratios of each microservice2 build to nginx and between the first two builds
(tls_main, tls_report).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS_DIR = BENCH / "results"
RESULTS_MD = BENCH / "RESULTS.md"
RELEASE_BIN = ROOT / "target" / "release" / "microservice2"
AVATAR_JSON = ROOT / "src" / "avatar.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# ---------------------------------------------------------------------------------------------
# /proc readings


def process_tree(pid: int) -> list[int]:
    """The pid and its descendants (nginx runs a master and workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of every process (all its threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        total += int(fields[1]) * PAGE
    return total


def open_fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------------------------------
# Tools


def ensure_release_build_and(tools: dict[str, str]) -> None:
    """Installs the Debian packages providing missing `tools` (command -> package) and builds
    the release binary; bench/run does the same in shell for its own runs."""
    missing = [package for command, package in tools.items() if not shutil.which(command)]
    if missing:
        print(f"bench: installing {' '.join(missing)}", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)


# ---------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_stderr() -> IO[str]:
    """Where a server's stderr goes: a file, not a pipe nobody reads (a server that logs, one
    line per failed TLS handshake say, would block once the pipe is full)."""
    return tempfile.TemporaryFile("w+")


def stderr_tail(log: IO[str] | None, chars: int = 2000) -> str:
    """The end of what a server wrote to `log` (from server_stderr()), for an error message."""
    if log is None:
        return ""
    try:
        log.seek(0)
        text = log.read()
    except (OSError, ValueError):
        return ""
    return f"; its stderr:\n{text[-chars:].rstrip()}" if text.strip() else ""


def wait_port(
    port: int, proc: subprocess.Popen, limit: float = 30.0, log: IO[str] | None = None
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited early with status {proc.returncode}{stderr_tail(log)}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {limit}s")


# With --tls: `listen ... ssl` and these in the server block; session tickets stay on, as
# nginx has them by default.
NGINX_TLS = """
        ssl_protocols TLSv1.3;
        ssl_certificate {cert};
        ssl_certificate_key {key};"""

NGINX_CONF = """
worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 30000; multi_accept on; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_requests 1000000000;
    keepalive_timeout 75s;
    open_file_cache max=16 inactive=60s;
    open_file_cache_valid 3600s;
    sendfile {sendfile};
    tcp_nodelay on;
    etag off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port}{ssl} reuseport backlog=4096{deferred};{tls}
        location = /v1/avatar {{
            default_type application/json;
            add_header engine Rust/Hype;
            add_header location /v1/avatar;
            alias {dir}/avatar.json;
        }}
    }}
}}
"""


@dataclass
class Variant:
    name: str
    kind: str
    args: list[str]
    port: int = 0
    proc: subprocess.Popen | None = None
    workdir: tempfile.TemporaryDirectory | None = None
    binary: Path = RELEASE_BIN
    rss_start: int = 0
    # Kind `chain`: the serve-mode upstream behind the gateway (`proc`).
    upstream: subprocess.Popen | None = None
    # With --tls: the certificate and key it serves HTTPS with.
    tls: TlsFiles | None = None
    # Its stderr (and the upstream's), from server_stderr().
    logs: list[IO[str]] | None = None
    # Kind `nginx`: `listen ... deferred` (TCP_DEFER_ACCEPT), as microservice2's --defer-accept.
    deferred: bool = False

    @staticmethod
    def parse(spec: str) -> "Variant":
        if "=" not in spec:
            raise SystemExit(f"bench: --variant wants NAME=KIND[ ARGS], got {spec!r}")
        name, rest = spec.split("=", 1)
        parts = shlex.split(rest)
        if not parts:
            raise SystemExit(f"bench: --variant {spec!r} names no kind")
        kind, args = parts[0], parts[1:]
        variant = Variant(name, kind, args)
        if kind.startswith("m2-bin:"):
            variant.binary = Path(kind.split(":", 1)[1]).resolve()
            variant.kind = "m2"
        elif kind not in ("m2", "nginx", "chain"):
            raise SystemExit(f"bench: unknown kind {kind!r} in --variant {spec!r}")
        return variant

    def start(self, workers: int) -> None:
        self.port = free_port()
        if self.tls and self.kind == "chain":
            raise SystemExit(f"bench: --tls does not serve kind chain ({self.name})")
        self.logs = [server_stderr()]
        if self.kind == "chain":
            upstream_port = free_port()
            self.logs.append(server_stderr())
            self.upstream = subprocess.Popen(
                [str(self.binary), "--host", "127.0.0.1", "--port", str(upstream_port),
                 "--workers", str(workers)],
                stdout=subprocess.DEVNULL, stderr=self.logs[1], start_new_session=True,
            )
            wait_port(upstream_port, self.upstream, log=self.logs[1])
            cmd = [str(self.binary), "gateway", "--host", "127.0.0.1", "--port", str(self.port),
                   "--upstream", f"http://127.0.0.1:{upstream_port}/v1/avatar"]
            if not any(a.startswith("--workers") for a in self.args):
                cmd += ["--workers", str(workers)]
            cmd += self.args
        elif self.kind == "m2":
            cmd = [str(self.binary), "--host", "127.0.0.1", "--port", str(self.port)]
            if not any(a.startswith("--workers") for a in self.args):
                cmd += ["--workers", str(workers)]
            if self.tls and not any(a.startswith("--tls-cert") for a in self.args):
                cmd += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
            cmd += self.args
        else:
            self.workdir = tempfile.TemporaryDirectory(prefix="m2-bench-nginx-")
            work = Path(self.workdir.name)
            # nginx's workers run as an unprivileged user: they must be able to read the file.
            work.chmod(0o755)
            (work / "avatar.json").write_bytes(AVATAR_JSON.read_bytes())
            sendfile = "on" if "sendfile" in self.args else "off"
            ssl, tls = "", ""
            if self.tls:
                ssl, tls = " ssl", NGINX_TLS.format(cert=self.tls.cert, key=self.tls.key)
            (work / "nginx.conf").write_text(
                NGINX_CONF.format(workers=workers, dir=work, port=self.port, sendfile=sendfile,
                                  ssl=ssl, tls=tls, deferred=" deferred" if self.deferred else "")
            )
            cmd = ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=self.logs[0], start_new_session=True
        )
        wait_port(self.port, self.proc, log=self.logs[0])
        time.sleep(0.2)
        self.rss_start = rss_bytes(self.pids())

    def pids(self) -> list[int]:
        return [pid for group in self.parts().values() for pid in group]

    def parts(self) -> dict[str, list[int]]:
        """The server's processes by role: a chain has a gateway and an upstream."""
        assert self.proc is not None
        if self.upstream is None:
            return {"server": process_tree(self.proc.pid)}
        return {
            "gateway": process_tree(self.proc.pid),
            "upstream": process_tree(self.upstream.pid),
        }

    @property
    def url(self) -> str:
        path = "/v1/user" if self.kind == "chain" else "/v1/avatar"
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.upstream and self.upstream.poll() is None:
            self.upstream.send_signal(signal.SIGTERM)
            try:
                self.upstream.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.upstream.pid, signal.SIGKILL)
                self.upstream.wait()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.kind == "m2" else signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.workdir:
            self.workdir.cleanup()
            self.workdir = None
        for log in self.logs or []:
            log.close()
        self.logs = None


# ---------------------------------------------------------------------------------------------
# TLS: one certificate for every server of a run, and what each negotiates


@dataclass
class TlsFiles:
    cert: Path
    key: Path


def make_certificate(directory: Path) -> TlsFiles:
    """A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1, made for this run."""
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(files.key), "-out", str(files.cert), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return files


TLS_REQUEST = b"GET /v1/avatar HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def s_client(port: int, ca: Path, session_in: Path | None, session_out: Path | None) -> str:
    """One TLS 1.3 connection by `openssl s_client` (the OpenSSL defaults wrk also uses), with
    one GET of the avatar; its output."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
           "-servername", "localhost", "-CAfile", str(ca), "-verify_ip", "127.0.0.1",
           "-ign_eof"]
    if session_in:
        cmd += ["-sess_in", str(session_in)]
    if session_out:
        cmd += ["-sess_out", str(session_out)]
    done = subprocess.run(cmd, input=TLS_REQUEST, capture_output=True, timeout=20)
    return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def tls_probe(variant: Variant, workdir: Path) -> dict:
    """What `variant` negotiates with an OpenSSL client: protocol, cipher, key exchange,
    signature, ALPN, whether the certificate verifies, the HTTP status, and whether a second
    connection offering the first one's session resumes it (wrk offers it on every reconnect)."""
    assert variant.tls is not None
    session = workdir / f"{variant.name}.session"
    first = s_client(variant.port, variant.tls.cert, None, session)
    found = re.search(r"^(New|Reused), (\S+), Cipher is (\S+)", first, re.M)
    if not found or found.group(3) == "(NONE)":
        raise RuntimeError(
            f"{variant.name} negotiated no TLS 1.3 session on port {variant.port}:\n"
            f"{first[-1500:].rstrip()}{stderr_tail((variant.logs or [None])[0])}"
        )

    def field(pattern: str, text: str = first) -> str:
        match = re.search(pattern, text, re.M)
        return match.group(1).strip() if match else "?"

    verify = field(r"^\s*Verify return code: (.+)$")
    alpn = field(r"^ALPN protocol: (.+)$")
    if alpn == "?" and "No ALPN negotiated" in first:
        alpn = "none"
    status = field(r"^(HTTP/\S+ \d+)")
    second = s_client(variant.port, variant.tls.cert, session, None) if session.exists() else ""
    return {
        "protocol": found.group(2),
        "cipher": found.group(3),
        "key_exchange": field(r"^Server Temp Key: (.+)$"),
        "signature": f"{field(r'^Peer signature type: (.+)$')}+"
                     f"{field(r'^Peer signing digest: (.+)$')}",
        "alpn": alpn,
        "verify": verify,
        "http_status": status,
        "tickets": first.count("New Session Ticket arrived"),
        "resumed": bool(re.search(r"^Reused, ", second, re.M)),
    }


# ---------------------------------------------------------------------------------------------
# Load generators

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_wrk(out: str) -> dict:
    result: dict = {}
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if not match:
        raise RuntimeError(f"wrk printed no request count:\n{out}")
    result["requests"] = int(match.group(1))
    result["requests_per_s"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    result["latency_max_ms"] = seconds(latency.group(3)) * 1e3
    for pct in ("50", "75", "90", "99"):
        found = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if found:
            result[f"latency_p{pct}_ms"] = seconds(found.group(1)) * 1e3
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    result["socket_errors"] = sum(int(g) for g in errors.groups()) if errors else 0
    return result


def run_wrk(url: str, wrk_args: list[str], script: str | None, script_args: list[str]) -> dict:
    cmd = ["wrk", "--latency", *wrk_args]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    if script_args:
        cmd += ["--", *script_args]
    # wrk's own CPU time, from its rusage: on a machine shared with the server it bounds
    # how many requests per second any server could be driven at.
    # Both streams go to files, not pipes: nothing reads a pipe while wait4 waits, so a wrk
    # that wrote more than a pipe holds would never exit.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"wrk exited with {proc.returncode}: {err.read()}")
        out.seek(0)
        result = parse_wrk(out.read())
    requests = max(result["requests"], 1)
    result["load_cpu_us_per_request"] = (usage.ru_utime + usage.ru_stime) * 1e6 / requests
    return result


def run_k6(base_url: str, k6_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        cmd = ["k6", "run", "--quiet", "--summary-export", str(summary), *k6_args]
        cmd += ["-e", f"BASE_URL={base_url}", str(ROOT / "k6" / "microservice2-get.js")]
        subprocess.run(cmd, capture_output=True, text=True, check=True)
        data = json.loads(summary.read_text())
    metrics = data["metrics"]
    duration = metrics["http_req_duration"]
    reqs = metrics["http_reqs"]
    failed = metrics["http_req_failed"]
    return {
        "requests": int(reqs["count"]),
        "requests_per_s": reqs["rate"],
        "latency_p50_ms": duration["med"],
        "latency_p90_ms": duration["p(90)"],
        "latency_p95_ms": duration["p(95)"],
        "latency_max_ms": duration["max"],
        "failed_rate": failed.get("value", failed.get("rate", 0.0)),
        "non_2xx": 0,
        "socket_errors": 0,
    }


def measured(variant: Variant, drive) -> dict:
    """Runs one load round against `variant`, adding its CPU time and RSS."""
    pids = variant.pids()
    cpu_before = cpu_seconds(pids)
    parts_before = {part: cpu_seconds(group) for part, group in variant.parts().items()}
    samples: list[int] = []
    proc_result: dict = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append(rss_bytes(variant.pids()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        proc_result = drive()
    finally:
        done.set()
        sampler.join()
    cpu_after = cpu_seconds(variant.pids())
    requests = max(proc_result["requests"], 1)
    proc_result["cpu_us_per_request"] = (cpu_after - cpu_before) * 1e6 / requests
    if len(parts_before) > 1:
        for part, group in variant.parts().items():
            used = cpu_seconds(group) - parts_before[part]
            proc_result[f"cpu_us_per_request_{part}"] = used * 1e6 / requests
    # Idle: right after start, before any load; busy: the peak sampled during this round.
    proc_result["rss_idle_mib"] = variant.rss_start / 2**20
    proc_result["rss_busy_mib"] = (max(samples) if samples else rss_bytes(pids)) / 2**20
    return proc_result


# ---------------------------------------------------------------------------------------------
# Instruction counts under callgrind


def callgrind_run(
    binary: Path, requests_wanted: int, connections: int, gateway: bool = False,
    gateway_args: list[str] | None = None, serve_args: list[str] | None = None,
    shape: str = "plain",
) -> tuple[int, int]:
    """Runs the server under callgrind with one worker, drives it with wrk until at least
    `requests_wanted` requests were answered (0: none), stops it, and returns
    (instructions, requests). With `gateway`, the server under callgrind is
    `microservice2 gateway` (with `gateway_args`), in front of a serve-mode upstream running
    natively. `serve_args` are added to the server's own flags (either mode). `shape` is a
    request shape of wrk/shape.lua; answers other than 2xx are allowed only when the server's
    flags inject them."""
    port = free_port()
    upstream = None
    args = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            *(serve_args or [])]
    path = "/v1/avatar"
    if gateway:
        upstream_port = free_port()
        upstream = subprocess.Popen(
            [str(binary), "--host", "127.0.0.1", "--port", str(upstream_port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_port(upstream_port, upstream)
        args[1:1] = ["gateway", "--upstream", f"http://127.0.0.1:{upstream_port}/v1/avatar",
                     *(gateway_args or [])]
        path = "/v1/user"
    with tempfile.TemporaryDirectory(prefix="m2-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            wait_port(port, proc, limit=120)
            served = 0
            while served < requests_wanted:
                got = run_wrk(
                    f"http://127.0.0.1:{port}{path}",
                    ["-t1", f"-c{connections}", "-d5s", "--timeout", "10s"],
                    str(ROOT / "wrk" / "shape.lua"), [shape],
                )
                injects = any(arg.startswith("--behaviour") for arg in serve_args or [])
                if (got["non_2xx"] and not injects) or got["socket_errors"]:
                    raise RuntimeError(f"errors under callgrind: {got}")
                served += got["requests"]
            # The probe connection of wait_port is not a request; each wrk round's
            # connections are, at most, setup cost shared by thousands of requests.
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
            if upstream is not None:
                upstream.send_signal(signal.SIGTERM)
                upstream.wait(timeout=30)
        total = 0
        for line in out.read_text().splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
                break
        return total, served


def instructions_per_request(
    binary: Path, requests: int, gateway: bool = False, gateway_args: list[str] | None = None,
    serve_args: list[str] | None = None, shape: str = "plain",
) -> dict:
    base, _ = callgrind_run(binary, 0, 10, gateway, gateway_args, serve_args, shape)
    loaded, served = callgrind_run(
        binary, requests, 10, gateway, gateway_args, serve_args, shape)
    return {
        "instructions_total": loaded,
        "instructions_startup_shutdown": base,
        "requests": served,
        "instructions_per_request": (loaded - base) / served,
    }


# ---------------------------------------------------------------------------------------------
# Where the CPU goes, from perf samples

# A sample goes to the first category one of whose kernel functions is on its stack; a sample
# whose innermost frame is in user space is "user". "send" includes, on loopback, the client
# socket's receive processing, which the kernel runs in the sender's context.
PROFILE_CATEGORIES = [
    ("send", ("__x64_sys_sendto", "__x64_sys_sendmsg", "__x64_sys_writev", "__x64_sys_write",
              "__x64_sys_sendfile64", "__sys_sendto", "do_writev", "ksys_write")),
    ("recv", ("__x64_sys_recvfrom", "__x64_sys_recvmsg", "__x64_sys_read", "__x64_sys_readv",
              "__sys_recvfrom", "ksys_read")),
    ("file read", ("__x64_sys_pread64", "ksys_pread64")),
    ("scheduling", ("__schedule",)),
    ("epoll", ("__x64_sys_epoll_wait", "__x64_sys_epoll_pwait", "__x64_sys_epoll_ctl",
               "do_epoll_wait")),
    ("other syscalls", ("do_syscall_64",)),
]
# Interrupts (timers firing delayed ACKs and retransmits, IPIs) come first, whatever they
# interrupted.
INTERRUPT_PREFIXES = ("asm_sysvec_", "asm_common_interrupt")
PROFILE_ORDER = ["interrupts"] + [name for name, _ in PROFILE_CATEGORIES] + [
    "other kernel", "user"
]
# The two socket calls that answering a request needs, whatever the server: read it, write
# the answer.
SOCKET_CALLS = ("send", "recv")


def classify_sample(frames: list[tuple[str, bool]]) -> tuple[str, bool]:
    """(category, whether the sample is the loopback delivery into the peer's socket) of one
    sample's frames, innermost first, each (function, in the kernel)."""
    if not frames or not frames[0][1]:
        return "user", False
    names = {name for name, _ in frames}
    if any(name.startswith(INTERRUPT_PREFIXES) for name in names):
        return "interrupts", False
    delivery = "net_rx_action" in names
    for category, functions in PROFILE_CATEGORIES:
        if any(function in names for function in functions):
            return category, delivery
    return "other kernel", delivery


def perf_script_samples(text: str):
    """Yields each sample's frames (innermost first) from `perf script -F ip,sym,dso`."""
    frames: list[tuple[str, bool]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            if frames:
                yield frames
            frames = []
            continue
        kernel = fields[-1] == "([kernel.kallsyms])"
        frames.append((fields[1], kernel))
    if frames:
        yield frames


def cpu_shares(variant: "Variant", wrk_args: list[str], seconds_: float) -> dict:
    """Drives `variant` with wrk while `perf record -g` samples its processes; returns each
    category's share of the samples, and the share spent delivering into the client's socket."""
    with tempfile.TemporaryDirectory(prefix="m2-perf-") as tmp:
        data = Path(tmp) / "perf.data"
        pids = ",".join(str(pid) for pid in variant.pids())
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-F", "1999", "-g", "-o", str(data), "-p", pids,
             "--", "sleep", str(seconds_)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        args = [a for a in wrk_args if not a.startswith("-d")] + [f"-d{seconds_:g}s"]
        run_wrk(variant.url, args, None, [])
        _, error = perf.communicate()
        if perf.returncode != 0:
            raise RuntimeError(f"perf record failed ({perf.returncode}): {error.strip()}")
        script = subprocess.run(
            ["perf", "script", "-i", str(data), "-F", "ip,sym,dso"],
            capture_output=True, text=True, check=True,
        ).stdout
    counts = dict.fromkeys(PROFILE_ORDER, 0)
    delivery = total = 0
    for frames in perf_script_samples(script):
        category, delivering = classify_sample(frames)
        counts[category] += 1
        delivery += delivering
        total += 1
    if total == 0:
        raise RuntimeError(f"perf recorded no samples of {variant.name}")
    shares = {name: count / total for name, count in counts.items()}
    return {"samples": total, "shares": shares, "delivery_share": delivery / total}


def profile_report(names: list[str], summary: dict[str, dict], profiles: dict) -> list[str]:
    """The per-category table in µs per request, and the bounds it sets on the targets."""
    head = "| server | " + " | ".join(PROFILE_ORDER) + " | of which delivery into wrk's socket | total |"
    rows = [head, "|---|" + "---|" * (len(PROFILE_ORDER) + 2)]
    socket_cost = {}
    for name in names:
        cpu = summary[name]["cpu_us_per_request"]
        shares = profiles[name]["shares"]
        cells = [f"{shares[c] * cpu:.2f}" for c in PROFILE_ORDER]
        cells += [f"{profiles[name]['delivery_share'] * cpu:.2f}", f"{cpu:.2f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
        socket_cost[name] = sum(shares[c] for c in SOCKET_CALLS) * cpu
    lines = [
        "CPU µs per request of each server by where its samples fell (`perf record -g`, "
        "one extra round per server; shares of the samples times the median CPU per request "
        "of the measured rounds):",
        "",
        *rows,
        "",
    ]
    first, peer = names[0], names[-1]
    floor_name = min(socket_cost, key=socket_cost.get)
    floor = socket_cost[floor_name]
    peer_cpu = summary[peer]["cpu_us_per_request"]
    lines.append(
        f"Floor: the two socket calls every server makes per request (read it, write the "
        f"answer) cost **{floor:.2f} µs** in {floor_name}, the cheapest here. Against "
        f"{peer}'s {peer_cpu:.2f} µs that alone is **{floor / peer_cpu:.2f}x**, so a CPU "
        f"target of 0.7x would leave {max(0.7 * peer_cpu - floor, 0):.2f} µs per request for "
        f"everything else (waiting for events, scheduling, parsing, user space)."
    )
    load_first = summary[first].get("load_cpu_us_per_request")
    load_peer = summary[peer].get("load_cpu_us_per_request")
    if load_first and load_peer:
        ceiling = (peer_cpu + load_peer) / (floor + load_first)
        lines += [
            "",
            f"Ceiling on requests/s: wrk itself used {load_first:.2f} µs per request against "
            f"{first} and {load_peer:.2f} against {peer}. While the server and wrk share the "
            f"machine's cores and keep them busy, requests/s is the cores' time over the sum "
            f"of the two; a server costing only the floor would reach at most "
            f"**{ceiling:.2f}x** {peer}'s requests/s.",
        ]
    for name in names:
        busy = (summary[name]["cpu_us_per_request"] + summary[name].get(
            "load_cpu_us_per_request", 0)) * summary[name]["requests_per_s"] / 1e6
        lines.append("")
        lines.append(
            f"{name}: server and wrk together kept {busy:.2f} of {os.cpu_count()} cores busy."
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Reporting


def machine() -> dict:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


METRICS = [
    ("requests_per_s", "req/s", "{:,.0f}"),
    ("latency_p50_ms", "p50 ms", "{:.3f}"),
    ("latency_p99_ms", "p99 ms", "{:.3f}"),
    ("latency_max_ms", "max ms", "{:.2f}"),
    ("cpu_us_per_request", "CPU µs/req", "{:.2f}"),
    ("load_cpu_us_per_request", "wrk CPU µs/req", "{:.2f}"),
    ("rss_idle_mib", "RSS idle MiB", "{:.1f}"),
    ("rss_busy_mib", "RSS busy MiB", "{:.1f}"),
    ("non_2xx", "non-2xx", "{:.0f}"),
    ("socket_errors", "socket errors", "{:.0f}"),
]


def medians(rounds: list[dict]) -> dict:
    keys = rounds[0].keys()
    summary = {}
    for key in keys:
        values = [r[key] for r in rounds if isinstance(r.get(key), (int, float))]
        if values:
            summary[key] = statistics.median(values)
    # Errors are summed, not medianed: one is one too many.
    for key in ("non_2xx", "socket_errors"):
        if key in summary:
            summary[key] = sum(r[key] for r in rounds)
    return summary


def table(
    names: list[str], summary: dict[str, dict], metrics,
    pairs: list[tuple[str, str]] | None = None,
) -> str:
    """One row per server, then one ratio row per pair (default: the first against each
    other)."""
    present = [m for m in metrics if all(m[0] in summary[n] for n in names)]
    head = "| server | " + " | ".join(label for _, label, _ in present) + " |"
    rule = "|---|" + "---|" * len(present)
    rows = [head, rule]
    for name in names:
        cells = [fmt.format(summary[name][key]) for key, _, fmt in present]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    if pairs is None:
        pairs = [(names[0], other) for other in names[1:]]
    for first, other in pairs:
        cells = []
        for key, _, _ in present:
            denom = summary[other][key]
            cells.append(f"{summary[first][key] / denom:.2f}x" if denom else "–")
        rows.append(f"| **{first}/{other}** | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def svg_chart(names: list[str], summary: dict[str, dict], path: Path, title: str) -> None:
    """Two bar groups, requests/s and p99 latency, one bar per server."""
    colours = ["#d9480f", "#1c7ed6", "#37b24d", "#ae3ec9", "#f59f00"]
    panels = [("requests_per_s", "requests/s (higher is better)", "{:,.0f}")]
    p99_key = "latency_p99_ms" if all("latency_p99_ms" in summary[n] for n in names) else (
        "latency_p95_ms"
    )
    panels.append((p99_key, p99_key.split("_")[1] + " latency ms (lower is better)", "{:.2f}"))
    width, panel_h, bar_h, gap = 640, 40 + 34 * len(names), 24, 10
    height = 40 + panel_h * len(panels)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="24" font-size="15" font-weight="bold">{title}</text>',
    ]
    for index, (key, label, fmt) in enumerate(panels):
        top = 40 + index * panel_h
        parts.append(f'<text x="10" y="{top + 16}" font-weight="bold">{label}</text>')
        biggest = max(summary[n][key] for n in names) or 1
        for row, name in enumerate(names):
            y = top + 26 + row * (bar_h + gap)
            length = (width - 260) * summary[name][key] / biggest
            colour = colours[row % len(colours)]
            parts.append(f'<text x="10" y="{y + 17}">{name}</text>')
            parts.append(
                f'<rect x="120" y="{y}" width="{length:.1f}" height="{bar_h}" fill="{colour}"/>'
            )
            value = fmt.format(summary[name][key])
            parts.append(f'<text x="{126 + length:.1f}" y="{y + 17}">{value}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def replace_section(name: str, body: str) -> None:
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS_MD.write_text(text)


# ---------------------------------------------------------------------------------------------
# --tls: every server on HTTPS with the same certificate, two loads in one run

# (key, title, wrk flags added to --wrk)
TLS_LOADS = [
    ("keep-alive", "Keep-alive", []),
    ("handshake", "Handshake-heavy: a new connection, so a new TLS handshake, per request",
     ["-H", "Connection: close"]),
]
# The targets: ratios of each microservice2 build to nginx, same run.
TLS_TARGETS = {
    "keep-alive": [("requests_per_s", "requests/s", ">=", 1.1),
                   ("cpu_us_per_request", "CPU per request", "<=", 0.9)],
    "handshake": [("requests_per_s", "requests/s", ">=", 1.0)],
}


def passive_opens() -> int:
    """TCP connections accepted on this machine so far (/proc/net/snmp): while one server is
    under load, the count of its new connections."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
             if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("PassiveOpens")])


def machine_busy_seconds() -> float:
    """CPU time all cores spent not idle so far (/proc/stat), in seconds."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def counting_connections(drive):
    """`drive`, with the connections accepted and the machine's busy CPU time while it ran,
    per request it made: other work on a shared machine shows in both."""
    def counted() -> dict:
        opens, busy = passive_opens(), machine_busy_seconds()
        result = drive()
        requests = max(result["requests"], 1)
        result["connections_per_request"] = (passive_opens() - opens) / requests
        result["machine_cpu_us_per_request"] = (machine_busy_seconds() - busy) * 1e6 / requests
        return result
    return counted


def cores_busy(result: dict) -> float:
    """Cores the server and wrk kept busy together: their CPU per request times requests/s."""
    cpu = result["cpu_us_per_request"] + result.get("load_cpu_us_per_request", 0)
    return cpu * result["requests_per_s"] / 1e6


def cores_busy_elsewhere(result: dict) -> float:
    """Cores busy with anything but the server and wrk (kernel threads, interrupts, other
    processes) while the load ran."""
    machine = result.get("machine_cpu_us_per_request", 0) * result["requests_per_s"] / 1e6
    return max(machine - cores_busy(result), 0.0)


def tls_verified(probe: dict) -> str:
    return "verifies" if probe["verify"].startswith("0 ") else probe["verify"]


def tls_checks(probes: dict[str, dict]) -> None:
    """Every server must have answered over TLS 1.3, with one cipher for all, on the run's
    certificate."""
    for name, probe in probes.items():
        if probe["protocol"] != "TLSv1.3":
            raise RuntimeError(f"{name} negotiated {probe['protocol']}, not TLSv1.3")
        if not probe["verify"].startswith("0 "):
            raise RuntimeError(f"{name}'s certificate did not verify: {probe['verify']}")
        if not probe["http_status"].endswith(" 200"):
            raise RuntimeError(f"{name} answered {probe['http_status']} over TLS, not 200")
    ciphers = {probe["cipher"] for probe in probes.values()}
    if len(ciphers) != 1:
        found = ", ".join(f"{n}: {p['cipher']}" for n, p in probes.items())
        raise RuntimeError(f"the servers negotiated different ciphers ({found})")


def provider_lines(builds: list[str], summary: dict[str, dict[str, dict]],
                   rounds: dict[str, dict[str, list[dict]]]) -> list[str]:
    """Which of the first two builds is faster (requests/s) and which is cheaper (CPU per
    request) in each load, by how much, and whether that is beyond the spread of the rounds."""
    first, second = builds[0], builds[1]
    measures = [("requests_per_s", "faster", "requests/s", "{:,.0f}", True),
                ("cpu_us_per_request", "cheaper", "CPU µs per request", "{:.2f}", False)]
    lines, verdicts, firm = [], [], []
    for metric, word, label, fmt, higher in measures:
        winners = []
        for key, title, _ in TLS_LOADS:
            load = title.split(":")[0]
            ratio = summary[key][first][metric] / summary[key][second][metric]
            best, other = (first, second) if (ratio >= 1) == higher else (second, first)
            factor = summary[key][best][metric] / summary[key][other][metric]
            spans = {
                name: (min(r[metric] for r in rounds[key][name]),
                       max(r[metric] for r in rounds[key][name]))
                for name in (first, second)
            }
            apart = (spans[best][0] > spans[other][1] if higher
                     else spans[best][1] < spans[other][0])
            winners.append(f"**{best}** {load.lower()} ({factor:.2f}x)")
            if apart:
                firm.append(f"{load.lower()} {label}, {best} {factor:.2f}x {other}'s")
            lines.append(
                f"- {load}, {label}: **{best}** {word}, **{factor:.2f}x** {other}'s "
                f"({abs(factor - 1) * 100:.1f}% {'more' if higher else 'less'}); rounds "
                f"{first} {fmt.format(spans[first][0])}–{fmt.format(spans[first][1])}, "
                f"{second} {fmt.format(spans[second][0])}–{fmt.format(spans[second][1])}: "
                + ("apart." if apart else "overlapping, within the spread of the rounds.")
            )
        verdicts.append(f"{word} ({label}): " + ", ".join(winners))
    verdict = "; ".join(verdicts)
    beyond = ("Beyond the spread of the rounds: " + "; ".join(firm) + "." if firm
              else "No difference between them is beyond the spread of the rounds.")
    return [f"Provider: {first} against {second}, the same microservice2 source built with "
            f"each rustls crypto provider. {verdict[0].upper()}{verdict[1:]}. {beyond}", "",
            *lines]


def tls_main(opts: argparse.Namespace, variants: list[Variant]) -> int:
    """--tls: starts every server on HTTPS with one certificate made for this run, checks that
    they negotiate the same protocol and cipher, then runs each load of TLS_LOADS in rounds
    alternating the servers, and reports ratios to nginx (and between microservice2 builds)."""
    if opts.k6 or opts.profile:
        raise SystemExit("bench: --tls drives wrk only (no --k6, no --profile)")
    names = [v.name for v in variants]
    peers = [v.name for v in variants if v.kind == "nginx"]
    if not peers:
        raise SystemExit("bench: --tls needs an nginx variant to compare against")
    peer = peers[-1]
    builds = [v.name for v in variants if v.kind == "m2"]
    loads = [(key, title, shlex.split(opts.wrk) + extra) for key, title, extra in TLS_LOADS]
    rounds: dict[str, dict[str, list[dict]]] = {key: {n: [] for n in names} for key, _, _ in loads}
    probes: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="m2-bench-tls-") as tmp:
        files = make_certificate(Path(tmp))
        for variant in variants:
            variant.tls = files
        try:
            for variant in variants:
                variant.start(opts.workers)
            for variant in variants:
                probes[variant.name] = probe = tls_probe(variant, Path(tmp))
                print(
                    f"{variant.name:>16}: {probe['protocol']} {probe['cipher']}, "
                    f"{probe['key_exchange']}, {probe['signature']}, ALPN {probe['alpn']}, "
                    f"verify {probe['verify']}, {probe['http_status']}, "
                    f"{probe['tickets']} tickets, resumes: {probe['resumed']}",
                    flush=True,
                )
            tls_checks(probes)
            for variant in variants:
                if seconds(opts.warmup) > 0:
                    run_wrk(variant.url, ["-t1", "-c50", f"-d{opts.warmup}"], None, [])
            for key, title, wrk_args in loads:
                for index in range(opts.rounds):
                    for variant in variants:
                        drive = lambda v=variant, a=wrk_args: run_wrk(  # noqa: E731
                            v.url, a, opts.script, opts.script_arg
                        )
                        result = measured(variant, counting_connections(drive))
                        rounds[key][variant.name].append(result)
                        print(
                            f"{key} round {index + 1}/{opts.rounds} {variant.name:>16}: "
                            f"{result['requests_per_s']:>10,.0f} req/s  "
                            f"{result['cpu_us_per_request']:.2f} CPU µs/req  "
                            f"{result['connections_per_request']:.3f} connections/req  "
                            f"{cores_busy_elsewhere(result):.2f} cores busy elsewhere",
                            flush=True,
                        )
                        if variant.proc.poll() is not None:
                            raise RuntimeError(f"{variant.name} exited during the run")
        finally:
            for variant in variants:
                variant.stop()

    summary = {key: {n: medians(rounds[key][n]) for n in names} for key, _, _ in loads}
    report: dict = {
        "mode": opts.mode,
        "machine": machine(),
        "command": opts.command,
        "certificate": "ECDSA P-256, self-signed, CN localhost, SAN DNS:localhost IP:127.0.0.1",
        "loads": {key: ["wrk", "--latency", *args] for key, _, args in loads},
        "variants": {v.name: {"kind": v.kind, "args": v.args} for v in variants},
        "workers": opts.workers,
        "rounds_per_server": opts.rounds,
        "peer": peer,
        "builds": builds,
        "negotiated": probes,
        "rounds": rounds,
        "medians": summary,
    }
    targets = []
    for key, title, _ in loads:
        for build in builds:
            mine = summary[key][build]
            errors = mine.get("non_2xx", 0) + mine.get("socket_errors", 0)
            # Every request on its own connection, or the load was not the handshake-heavy one.
            reconnected = key != "handshake" or mine["connections_per_request"] >= 0.95
            for metric, label, op, target in TLS_TARGETS[key]:
                ratio = mine[metric] / summary[key][peer][metric]
                met = ratio >= target if op == ">=" else ratio <= target
                why = ("" if not errors else f"{errors:,.0f} errors") or (
                    "" if reconnected else
                    f"{mine['connections_per_request']:.2f} connections per request")
                targets.append({"load": key, "build": build, "metric": metric, "label": label,
                                "ratio": ratio, "op": op, "target": target,
                                "pass": met and not why, "why": why})
    report["targets"] = targets
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{opts.mode}.json").write_text(json.dumps(report, indent=2) + "\n")
    tls_report(report, opts.title, opts.note)
    return 0


def tls_report(report: dict, title: str = "", note: str = "") -> None:
    """Prints the tables of a --tls run's report (as in bench/results/MODE.json), writes its
    charts and its section of RESULTS.md."""
    mode, probes, summary = report["mode"], report["negotiated"], report["medians"]
    names, peer, builds = list(report["variants"]), report["peer"], report["builds"]
    loads = [(key, heading, report["loads"][key][2:]) for key, heading, _ in TLS_LOADS]
    cipher = next(iter(probes.values()))["cipher"]
    same_kx = len({p["key_exchange"] for p in probes.values()}) == 1
    negotiated = [
        "| server | protocol | cipher | key exchange | signature | ALPN | certificate | "
        "session tickets | resumes an offered session |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, probe in probes.items():
        negotiated.append(
            f"| {name} | {probe['protocol']} | {probe['cipher']} | {probe['key_exchange']} | "
            f"{probe['signature']} | {probe['alpn']} | {tls_verified(probe)} | "
            f"{probe['tickets']} | {'yes' if probe['resumed'] else 'no'} |"
        )
    lines = [
        *section_head(title or mode, note, report["machine"]),
        f"Command: `{report['command']}` — {report['rounds_per_server']} alternating rounds "
        f"per server and load, medians (errors summed); servers with {report['workers']} "
        f"workers, all serving one "
        f"ECDSA P-256 self-signed certificate made for this run (`openssl req`, CN and SAN "
        f"localhost, 127.0.0.1); nginx with `ssl_protocols TLSv1.3`, session tickets on (its "
        f"default), the keep-alive settings of the cleartext runs; figures in "
        f"`bench/results/{mode}.json`.",
        "",
        "Negotiated, by `openssl s_client -tls1_3` (the OpenSSL defaults wrk uses too) and one "
        "GET; `resumes`: a second connection offering the first one's session resumed it:",
        "",
        *negotiated,
        "",
        f"Same protocol and cipher for every server: **TLSv1.3, {cipher}**"
        + ("." if same_kx else "; the key exchange differs, as the table shows."),
        "",
    ]
    for key, heading, args in loads:
        text = table(names, summary[key], METRICS,
                     [(b, peer) for b in builds] + ([(builds[0], builds[1])] if len(builds) > 1
                                                    else []))
        print(f"\n{heading}: wrk --latency {shlex.join(args)}\n{text}")
        lines += [f"### {heading}", "", f"Load: `wrk --latency {shlex.join(args)}`.", "", text,
                  ""]
        busy = [f"{name} {cores_busy(summary[key][name]):.2f}" for name in names]
        elsewhere = [f"{name} {cores_busy_elsewhere(summary[key][name]):.2f}" for name in names]
        opened = [f"{name} {summary[key][name]['connections_per_request']:.3f}" for name in names]
        lines += [f"Of the machine's {report['machine']['cores']} cores, server and wrk together "
                  f"kept busy: {', '.join(busy)}; anything else (kernel threads, interrupts, "
                  f"other processes): {', '.join(elsewhere)}. Connections accepted per "
                  f"request: {', '.join(opened)}.", ""]
        if key == "handshake":
            lines += [
                "wrk keeps each connection's TLS session when it reconnects and offers it "
                "back, so a server that resumes it (the last column of what was negotiated) "
                "does a resumed TLS 1.3 handshake (a pre-shared key with a fresh key exchange, "
                "no certificate signature) for every request after a connection's first. "
                "Connections accepted per request: TCP connections the machine accepted "
                "during a server's rounds (`PassiveOpens` of /proc/net/snmp) over its "
                "requests; 1 means every request had its own.",
                "",
            ]
        chart = RESULTS_DIR / f"{mode}-{key}.svg"
        svg_chart(names, summary[key], chart, f"{title or mode}: {key}")
        lines += [f"![{mode} {key} chart](results/{chart.name})", ""]
    rows = ["| build | load | measure | against nginx | target | result |",
            "|---|---|---|---|---|---|"]
    for t in report["targets"]:
        sign = "≥" if t["op"] == ">=" else "≤"
        rows.append(
            f"| {t['build']} | {t['load']} | {t['label']} | {t['ratio']:.2f}x | "
            f"{sign} {t['target']:.1f}x | **{'pass' if t['pass'] else 'fail'}**"
            + (f" ({t['why']})" if t["why"] else "") + " |"
        )
    lines += [f"Targets (each build against {peer}, medians of this run):", "", *rows, ""]
    print("\n" + "\n".join(rows))
    if len(builds) > 1:
        provider = provider_lines(builds, summary, report["rounds"])
        print("\n" + "\n".join(provider))
        lines += [*provider, ""]
    replace_section(mode, "\n".join(lines))
    print(f"\nwrote {RESULTS_DIR / (mode + '.json')} and a '{mode}' section of {RESULTS_MD}")


def section_head(title: str, note: str, machine: dict) -> list[str]:
    """A RESULTS.md section's title, the run's note, and the machine, as lines."""
    return [
        f"## {title}",
        "",
        *([note, ""] if note else []),
        f"Machine: {machine['cores']} cores, {machine['cpu_model']}, "
        f"kernel {machine['kernel']}; {machine['date']}.",
        "",
    ]


# ---------------------------------------------------------------------------------------------
# Every request shape (bench/run --shapes)

# (shape, what it is, wrk flags, wrk/shape.lua's shape, microservice2's flags, the peer it is
# compared with in the same run: nginx for shapes nginx serves alike, else microservice2 with
# no flags under the plain load of the same wrk flags).
SHAPES = [
    ("plain", "plain GET, keep-alive", "-t2 -c100", "plain", [], "nginx"),
    ("cache-buster", "`?cb=<n>` on every request", "-t2 -c100", "cache-buster", [], "nginx"),
    ("noop-header", "`x-m2-behaviour: status=200`", "-t2 -c100", "noop-header", [], "plain"),
    ("status=503:1", "server started with `--behaviour 'status=503:1'`", "-t2 -c100",
     "plain", ["--behaviour", "status=503:1"], "plain"),
    ("lognormal", "`--behaviour 'delay=lognormal(1ms,5ms)'`, -c200", "-t2 -c200", "plain",
     ["--behaviour", "delay=lognormal(1ms,5ms)"], "plain"),
    ("max-inflight", "`--max-inflight 10000`", "-t2 -c100", "plain",
     ["--max-inflight", "10000"], "plain"),
    ("http10", "HTTP/1.0 with `Connection: keep-alive`", "-t2 -c100", "http10", [], "nginx"),
    ("close", "`Connection: close` on every request", "-t2 -c50", "close", [], "nginx"),
    ("close-deferred", "`Connection: close`, both accepting deferred (`--defer-accept`; "
     "nginx `listen ... deferred`)", "-t2 -c50", "close", ["--defer-accept"], "nginx-deferred"),
]


def shapes_main(opts) -> int:
    """Each shape's instructions per request under callgrind and, in the same run, its wrk
    figures against a peer (nginx, or microservice2's plain load), alternating rounds."""
    script = str(ROOT / "wrk" / "shape.lua")
    duration = "-d8s"
    report: dict = {"mode": opts.mode, "machine": machine(), "command": opts.command,
                    "shapes": {}}
    for shape, what, flags, lua, m2_args, peer in SHAPES:
        wrk_args = [*shlex.split(flags), duration, "--timeout", "10s"]
        ours = Variant("microservice2", "m2", list(m2_args))
        if peer.startswith("nginx"):
            theirs = Variant(peer.replace("-", " "), "nginx", [], deferred=peer != "nginx")
        else:
            theirs = Variant("microservice2 plain", "m2", [])
        peer_lua = lua if peer.startswith("nginx") else "plain"
        rounds: dict[str, list[dict]] = {"ours": [], "peer": []}
        try:
            for variant in (ours, theirs):
                variant.start(opts.workers)
                run_wrk(variant.url, ["-t1", "-c50", "-d1s"], script, [peer_lua])
            for index in range(opts.rounds):
                for key, variant, arg in (("ours", ours, lua), ("peer", theirs, peer_lua)):
                    result = measured(variant, lambda v=variant, a=arg: run_wrk(
                        v.url, wrk_args, script, [a]))
                    rounds[key].append(result)
                print(f"{shape:>14} round {index + 1}/{opts.rounds}: "
                      f"{rounds['ours'][-1]['requests_per_s']:>9,.0f} req/s against "
                      f"{rounds['peer'][-1]['requests_per_s']:>9,.0f}", flush=True)
        finally:
            for variant in (ours, theirs):
                variant.stop()
        instructions = None
        if opts.callgrind:
            # Under callgrind a delayed load is slow: fewer requests, still thousands.
            wanted = opts.callgrind if lua != "close" and shape != "lognormal" else opts.callgrind // 4
            print(f"{shape:>14} callgrind...", flush=True)
            instructions = instructions_per_request(
                RELEASE_BIN, wanted, serve_args=list(m2_args), shape=lua)
        report["shapes"][shape] = {
            "what": what, "wrk": ["wrk", *wrk_args, "-s", "wrk/shape.lua", "--", lua],
            "flags": m2_args, "peer": theirs.name, "rounds": rounds,
            "ours": medians(rounds["ours"]), "theirs": medians(rounds["peer"]),
            "callgrind": instructions,
        }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{opts.mode}.json").write_text(json.dumps(report, indent=2) + "\n")
    plain = (report["shapes"].get("plain", {}).get("callgrind") or {}).get(
        "instructions_per_request")
    rows = ["| shape | instructions/request | vs plain | req/s | CPU µs/req | p99 ms | "
            "compared with | its req/s | its CPU µs/req | its p99 ms | req/s ratio | "
            "CPU/req ratio | p99 ratio |", "|---|" + "---|" * 12]
    for shape, data in report["shapes"].items():
        ours, theirs = data["ours"], data["theirs"]
        cg = (data["callgrind"] or {}).get("instructions_per_request")
        cells = [
            data["what"],
            f"{cg:,.0f}" if cg else "–",
            f"{cg / plain:.2f}x" if cg and plain else "–",
            f"{ours['requests_per_s']:,.0f}", f"{ours['cpu_us_per_request']:.2f}",
            f"{ours['latency_p99_ms']:.2f}",
            data["peer"],
            f"{theirs['requests_per_s']:,.0f}", f"{theirs['cpu_us_per_request']:.2f}",
            f"{theirs['latency_p99_ms']:.2f}",
            f"{ours['requests_per_s'] / theirs['requests_per_s']:.2f}x",
            f"{ours['cpu_us_per_request'] / theirs['cpu_us_per_request']:.2f}x",
            f"{ours['latency_p99_ms'] / theirs['latency_p99_ms']:.2f}x",
        ]
        errors = ours.get("socket_errors", 0) + theirs.get("socket_errors", 0)
        if errors:
            cells[0] += f" ({errors:.0f} socket errors)"
        rows.append("| " + " | ".join(cells) + " |")
    text = "\n".join(rows)
    print()
    print(text)
    lines = [
        *section_head(opts.title or opts.mode, opts.note, report["machine"]),
        f"Command: `{opts.command}` — per shape, wrk `{duration}` with `wrk/shape.lua`, "
        f"{opts.rounds} alternating rounds against the peer in the same run, medians; "
        f"servers with {opts.workers} workers. Instructions: callgrind, one worker, wrk -t1 "
        f"-c10 with the same shape, start-up and shutdown subtracted. Peers: nginx serving the "
        f"same file where nginx serves the shape alike, else microservice2 without flags "
        f"under the plain load of the same wrk flags. Non-2xx answers are the injected ones. "
        f"Figures in `bench/results/{opts.mode}.json`.",
        "",
        text,
        "",
    ]
    replace_section(opts.mode, "\n".join(lines))
    print(f"\nwrote {RESULTS_DIR / (opts.mode + '.json')} and a '{opts.mode}' section of "
          f"{RESULTS_MD}")
    return 0


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="wrk", help="section name and kind: wrk, k6, scale, ...")
    parser.add_argument("--k6", action="store_true", help="drive with the seed's k6 load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--variant", action="append", default=[], help="NAME=KIND[ ARGS]")
    parser.add_argument("--wrk", default="-t2 -c100 -d10s", help="wrk flags")
    parser.add_argument("--script", help="wrk Lua script")
    parser.add_argument("--script-arg", action="append", default=[])
    parser.add_argument("--k6-args", default="", help="extra k6 flags")
    parser.add_argument("--warmup", default="2s")
    parser.add_argument("--callgrind", type=int, default=20000,
                        help="requests to count instructions over (0: skip)")
    parser.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                        help="after the rounds, sample each server with perf for SECONDS")
    parser.add_argument("--title", default="")
    parser.add_argument("--note", default="", help="a sentence to print above the table")
    parser.add_argument("--command", default="bench/run", help="the command line, for the report")
    parser.add_argument("--tls", action="store_true",
                        help="serve HTTPS with a certificate made for the run and drive two "
                        "loads, keep-alive and a new connection per request")
    parser.add_argument("--shapes", action="store_true",
                        help="every request shape against a peer, and its instructions")
    opts = parser.parse_args()
    if opts.shapes:
        return shapes_main(opts)

    specs = opts.variant or ["microservice2=m2", "nginx=nginx"]
    variants = [Variant.parse(s) for s in specs]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SystemExit("bench: variant names must differ")
    if opts.tls:
        return tls_main(opts, variants)
    wrk_args = shlex.split(opts.wrk)
    k6_args = shlex.split(opts.k6_args)
    kind = "k6" if opts.k6 else "wrk"

    rounds: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for variant in variants:
            variant.start(opts.workers)
        for variant in variants:
            if kind == "wrk" and seconds(opts.warmup) > 0:
                run_wrk(variant.url, ["-t1", "-c50", f"-d{opts.warmup}"], None, [])
        for index in range(opts.rounds):
            for variant in variants:
                if kind == "k6":
                    base = f"http://127.0.0.1:{variant.port}"
                    drive = lambda base=base: run_k6(base, k6_args)  # noqa: E731
                else:
                    drive = lambda v=variant: run_wrk(  # noqa: E731
                        v.url, wrk_args, opts.script, opts.script_arg
                    )
                result = measured(variant, drive)
                rounds[variant.name].append(result)
                print(
                    f"round {index + 1}/{opts.rounds} {variant.name:>16}: "
                    f"{result['requests_per_s']:>10,.0f} req/s  "
                    f"{result['cpu_us_per_request']:.2f} CPU µs/req",
                    flush=True,
                )
                if variant.proc.poll() is not None:
                    raise RuntimeError(f"{variant.name} exited during the run")
        profiles = {}
        for variant in variants if opts.profile else []:
            print(f"perf: sampling {variant.name} for {opts.profile:g} s...", flush=True)
            profiles[variant.name] = cpu_shares(variant, wrk_args, opts.profile)
    finally:
        for variant in variants:
            variant.stop()

    summary = {n: medians(rounds[n]) for n in names}
    report: dict = {
        "mode": opts.mode,
        "machine": machine(),
        "command": opts.command,
        "load": (["k6", *k6_args] if kind == "k6" else ["wrk", "--latency", *wrk_args]),
        "variants": {v.name: {"kind": v.kind, "args": v.args} for v in variants},
        "rounds": rounds,
        "medians": summary,
    }
    if profiles:
        report["profile"] = profiles
    if opts.callgrind:
        report["callgrind"] = {}
        for variant in variants:
            # Serve mode runs under callgrind with its defaults and one worker; a chain's
            # gateway with its flags (the client, say) and one worker.
            chain = variant.kind == "chain"
            if variant.kind not in ("m2", "chain") or (variant.args and not chain):
                continue
            if any(a.startswith("--workers") for a in variant.args):
                continue
            print(f"callgrind: instructions per request of {variant.name}...", flush=True)
            report["callgrind"][variant.name] = instructions_per_request(
                variant.binary, opts.callgrind, gateway=chain, gateway_args=variant.args
            )

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{opts.mode}.json").write_text(json.dumps(report, indent=2) + "\n")
    if opts.mode == "wrk":
        (RESULTS_DIR / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    metrics = list(METRICS)
    if kind == "k6":
        metrics = [
            ("requests_per_s", "req/s", "{:,.0f}"),
            ("latency_p50_ms", "med ms", "{:.3f}"),
            ("latency_p95_ms", "p95 ms", "{:.3f}"),
            ("latency_max_ms", "max ms", "{:.2f}"),
            ("failed_rate", "failed", "{:.4f}"),
            ("cpu_us_per_request", "CPU µs/req", "{:.2f}"),
            ("rss_busy_mib", "RSS busy MiB", "{:.1f}"),
        ]
    text = table(names, summary, metrics)
    print()
    print(text)
    lines = [
        *section_head(opts.title or opts.mode, opts.note, report["machine"]),
        f"Command: `{opts.command}` — load `{' '.join(report['load'])}`, "
        f"{opts.rounds} alternating rounds per server, medians (errors summed); "
        f"servers with {opts.workers} workers; figures in `bench/results/{opts.mode}.json`.",
        "",
        text,
        "",
    ]
    chains = {v.name for v in variants if v.kind == "chain"}
    for name in names:
        gateway = summary[name].get("cpu_us_per_request_gateway")
        upstream = summary[name].get("cpu_us_per_request_upstream")
        if gateway is None or upstream is None:
            continue
        line = (
            f"Chain {name}: CPU per request of the gateway **{gateway:.2f} µs**, of the "
            f"serve-mode upstream behind it {upstream:.2f} µs: gateway/serve "
            f"**{gateway / upstream:.2f}x**"
        )
        for other in names:
            direct = summary[other].get("cpu_us_per_request")
            if other != name and direct and "cpu_us_per_request_gateway" not in summary[other]:
                line += f"; against {other} served directly ({direct:.2f} µs) {gateway / direct:.2f}x"
        line += "."
        print(line)
        lines += [line, ""]
    if profiles:
        profile_lines = profile_report(names, summary, profiles)
        print("\n".join(profile_lines))
        lines += [*profile_lines, ""]
    for name, cg in report.get("callgrind", {}).items():
        who = f"{name}'s gateway (upstream native)" if name in chains else name
        line = (
            f"User-space instructions per request of {who} (callgrind, one worker, 10 "
            f"keep-alive connections, {cg['requests']:,} requests, start-up and shutdown "
            f"subtracted): **{cg['instructions_per_request']:,.0f}**."
        )
        print(line)
        lines += [line, ""]
    chart = RESULTS_DIR / f"{opts.mode}.svg"
    svg_chart(names, summary, chart, opts.title or opts.mode)
    lines.append(f"![{opts.mode} chart](results/{chart.name})")
    replace_section(opts.mode, "\n".join(lines))
    print(f"\nwrote {RESULTS_DIR / (opts.mode + '.json')} and a '{opts.mode}' section of {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
