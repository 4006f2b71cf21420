"""End-to-end lifecycle benchmark: the HTTP service on PostgreSQL against the bare engine.

    python -m bench.lifecycle [--lifecycles N] [--clients C] [--workers W] [--threads T] [--quick] [--json PATH]

One run does both measurements:

* HTTP: a fresh PostgreSQL schema in database `test` (BENCH_DATABASE_URL), the real server
  (`python -m app.cli serve`, gunicorn with W workers of T threads; T=1, the default, is sync
  workers) and C client threads driving N milestone lifecycles: create milestone -> activate ->
  submit (submitter) -> approve (finance approver), four requests. Threads (gthread, what
  `serve` runs by default) measured no better on 2 cores: the run is CPU-bound there (workers,
  PostgreSQL and the clients share the cores), and a kept-alive client connection stays with
  one worker, so the load can split unevenly between workers.
* Engine: the same diagram in-process, single-threaded, through `workflows.Instance`, with the
  state dumped and restored between the two steps as the service does, and a service handler
  that only returns small dicts.

It reports lifecycles/s for both, their ratio (http/engine; target >= 0.5), the p50/p95 latency
of one HTTP lifecycle, and machine info. Any non-2xx answer or failed assertion fails the run.
The schema is dropped and the server stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DB_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_RATIO = 0.5
REQUESTS_PER_LIFECYCLE = 4  # create, activate, submit, complete
AMOUNT = "50000.00"  # financial, 10000 <= amount < 100000 -> DMN routes to finance-managers
APPROVER_GROUP = "finance-managers"
SUBMITTER = "bench-submitter"
APPROVER = "bench-approver"


class BenchFailure(Exception):
    pass


# --------------------------------------------------------------------------- database schema
def _psycopg_dsn(url: str) -> str:
    """SQLAlchemy URL -> libpq URL (drop the +driver part)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def create_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(_psycopg_dsn(url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(_psycopg_dsn(url), autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET lock_timeout = '20s'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m app.cli serve` in its own session, so that we can stop it and its workers."""

    def __init__(self, env: dict[str, str], port: int, workers: int, log_path: Path, threads: int = 1):
        self.env, self.port, self.workers, self.log_path = env, port, workers, log_path
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.workers), "--threads", str(self.threads)],
            cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        import requests

        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchFailure(f"server exited with {self.proc.returncode} before it was ready; "
                                   f"log:\n{self.log_tail()}")
            try:
                r = requests.get(self.base + "/readyz", timeout=2)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise BenchFailure(f"server not ready after {timeout:.0f}s ({last}); log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # gunicorn arbiter: graceful stop of its workers
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # our own session only
                proc.wait(timeout=5)
        if proc is not None:
            try:  # workers that outlived the arbiter (should not happen)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log is not None:
            self._log.close()
            self._log = None


def create_user(env: dict[str, str], name: str, group: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "users", "create", name, "--group", group],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise BenchFailure(f"users create {name} failed ({result.returncode}): {result.stderr.strip()}")
    token = result.stdout.strip().splitlines()[-1].strip()
    if not token:
        raise BenchFailure(f"users create {name} printed no token")
    return token


# --------------------------------------------------------------------------- HTTP lifecycles
@dataclass
class HttpStats:
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    milestone_ids: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


class Client:
    def __init__(self, base: str, submitter_token: str, approver_token: str, stats: HttpStats):
        import requests

        self.base = base + "/api/v1"
        self.http = requests.Session()
        self.submitter = {"Authorization": f"Bearer {submitter_token}"}
        self.approver = {"Authorization": f"Bearer {approver_token}"}
        self.stats = stats

    def call(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> Any:
        r = self.http.request(method, self.base + path, headers=headers, json=body, timeout=60)
        if not 200 <= r.status_code < 300:
            raise BenchFailure(f"{method} {path} -> {r.status_code}: {r.text[:300]}")
        return r.json()

    def lifecycle(self, contract_id: int, code: str) -> int:
        milestone = self.call("POST", "/milestones", self.submitter, {
            "contract_id": contract_id, "code": code, "type": "financial", "amount": AMOUNT,
            "currency": "EUR",
        })
        mid = milestone["id"]
        self.call("POST", f"/milestones/{mid}/activation", self.submitter)
        submission = self.call("POST", f"/milestones/{mid}/submission", self.submitter)
        tasks = submission.get("open_tasks") or []
        if not tasks:
            raise BenchFailure(f"submission of milestone {mid} opened no task: {submission}")
        if APPROVER_GROUP not in tasks[0].get("candidate_groups", []):
            raise BenchFailure(f"milestone {mid}: task routed to {tasks[0].get('candidate_groups')}, "
                               f"expected {APPROVER_GROUP}")
        task_id = tasks[0]["id"]
        done = self.call("POST", f"/tasks/{task_id}/completion", self.approver, {"decision": "approve"})
        if done.get("status") != "completed":
            raise BenchFailure(f"task {task_id} completion answered status {done.get('status')!r}")
        return int(mid)

    def check_final(self, mid: int) -> None:
        detail = self.call("GET", f"/milestones/{mid}", self.submitter)
        if detail.get("status") != "completed":
            raise BenchFailure(f"milestone {mid} is {detail.get('status')!r}, expected 'completed'")
        if detail.get("release") is None:
            raise BenchFailure(f"milestone {mid} has no fund release")
        if detail["release"].get("amount") != AMOUNT:
            released = detail["release"].get("amount")
            raise BenchFailure(f"milestone {mid} released {released}, expected {AMOUNT}")


def run_http(base: str, tokens: dict[str, str], lifecycles: int, clients: int, warmup: int,
             samples: int) -> dict[str, Any]:
    stats = HttpStats()
    setup = Client(base, tokens[SUBMITTER], tokens[APPROVER], stats)
    tag = f"{os.getpid()}-{int(time.time())}"
    account = setup.call("POST", "/accounts", setup.submitter, {"name": f"bench account {tag}"})
    contract = setup.call("POST", "/contracts", setup.submitter, {
        "account_id": account["id"], "number": f"BENCH-{tag}", "title": "lifecycle benchmark",
        "value": "1000000000000.00", "currency": "EUR",
    })
    contract_id = int(contract["id"])

    for i in range(warmup):  # warm every worker's deployment cache, connection pool, imports
        stats.milestone_ids.append(setup.lifecycle(contract_id, f"W-{i}"))

    counter = iter(range(lifecycles))
    counter_lock = threading.Lock()
    stop = threading.Event()

    def worker(n: int) -> None:
        client = Client(base, tokens[SUBMITTER], tokens[APPROVER], stats)
        while not stop.is_set():
            with counter_lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                mid = client.lifecycle(contract_id, f"L-{i}")
            except Exception as exc:  # a failed lifecycle is counted; the run fails at the end
                stats.error(f"lifecycle {i}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - t0
            with stats.lock:
                stats.latencies.append(elapsed)
                stats.milestone_ids.append(mid)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True, name=f"client-{n}")
               for n in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except BaseException:
        stop.set()
        raise
    wall = time.perf_counter() - t0

    # Verify the end state of a sample outside the timed window.
    sample = random.Random(0).sample(stats.milestone_ids, min(samples, len(stats.milestone_ids)))
    for mid in sample:
        try:
            setup.check_final(mid)
        except Exception as exc:
            stats.error(f"check milestone {mid}: {type(exc).__name__}: {exc}")

    lat = sorted(stats.latencies)
    ok = len(lat)
    return {
        "lifecycles": lifecycles,
        "completed": ok,
        "clients": clients,
        "warmup": warmup,
        "seconds": wall,
        "lifecycles_per_s": ok / wall if wall > 0 else 0.0,
        "requests_per_s": REQUESTS_PER_LIFECYCLE * ok / wall if wall > 0 else 0.0,
        "p50_ms": 1e3 * _pct(lat, 50) if lat else None,
        "p95_ms": 1e3 * _pct(lat, 95) if lat else None,
        "max_ms": 1e3 * lat[-1] if lat else None,
        "checked": len(sample),
        "errors": len(stats.errors),
        "error_samples": stats.errors[:10],
    }


def _pct(sorted_values: list[float], p: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# --------------------------------------------------------------------------- bare engine
def run_engine(lifecycles: int, warmup: int) -> dict[str, Any]:
    import logging

    import workflows
    from workflows import SERIALIZER_VERSION, Deployment, Instance, ServiceCall

    logging.getLogger("spiff").setLevel(logging.WARNING)  # as the app does
    t_parse = time.perf_counter()
    deployment = Deployment.from_directories(REPO / "bpmn", REPO / "dmn")
    parse_ms = 1e3 * (time.perf_counter() - t_parse)

    calls: dict[str, int] = {}

    def handler(call: ServiceCall) -> dict[str, Any]:
        calls[call.operation] = calls.get(call.operation, 0) + 1
        if call.operation == "set_milestone_status":
            return {"status": call.params.get("status"), "previous": "draft"}
        if call.operation == "release_funds":
            return {"release_id": 1, "amount": str(call.params.get("amount")),
                    "currency": call.params.get("currency")}
        if call.operation == "start_next_round":
            return {"requested": True, "from_round": call.params.get("from_round")}
        if call.operation in ("start_approval_round", "set_published", "cancel_approval_rounds"):
            return {"requested": True}
        if call.operation in ("start_contact_tasks", "end_contact_tasks"):
            return {"started": False, "reason": "the milestone has no primary contact"}  # as the app answers
        raise LookupError(call.operation)

    def lifecycle_step(blob: bytes, message: str) -> bytes:
        inst = Instance.restore(deployment, blob, SERIALIZER_VERSION, handler)
        inst.send_message(message, {"by": SUBMITTER})
        inst.next_timer_due()
        inst.ready_human_tasks()
        return inst.dump()

    def one(i: int) -> int:
        # The same diagrams and steps as the HTTP lifecycle: the milestone's lifecycle instance
        # (created, activated, submitted, told of the completion) and one approval round.
        lifecycle = Instance.start(deployment, "milestone_lifecycle", {"milestone_id": i + 1}, handler)
        lc_blob = lifecycle.dump()
        lc_blob = lifecycle_step(lc_blob, "activate")
        lc_blob = lifecycle_step(lc_blob, "submit")
        # The same start data as app.services.approvals._start_round.
        data = {
            "milestone_id": i + 1,
            "milestone_code": f"L-{i}",
            "milestone_type": "financial",
            "amount": Decimal(AMOUNT),
            "currency": "EUR",
            "submitted_by": SUBMITTER,
            "round": 1,
            "days_to_due": 9999,  # no due date
        }
        inst = Instance.start(deployment, "milestone_approval", data, handler)
        blob = inst.dump()
        inst.next_timer_due()
        ready = inst.ready_human_tasks()  # the service projects these on every save
        if len(ready) != 1 or ready[0].candidate_groups != (APPROVER_GROUP,):
            raise BenchFailure(f"engine: unexpected tasks after start: {ready}")
        inst = Instance.restore(deployment, blob, SERIALIZER_VERSION, handler)
        inst.complete(ready[0].id, {"decision": "approve", "completed_by": "x"})
        blob = inst.dump()
        inst.next_timer_due()
        if inst.ready_human_tasks():
            raise BenchFailure("engine: tasks left after approval")
        if not inst.is_completed:
            raise BenchFailure("engine: instance did not complete")
        if not (inst.data().get("release") or {}).get("release_id"):
            raise BenchFailure("engine: no fund release in the end data")
        lc_blob = lifecycle_step(lc_blob, "approval_completed")
        return len(blob)

    for i in range(warmup):
        one(-1 - i)
    calls.clear()
    t0 = time.perf_counter()
    sizes = [one(i) for i in range(lifecycles)]
    wall = time.perf_counter() - t0
    expected = {"set_milestone_status": 5 * lifecycles, "release_funds": lifecycles,
                "start_approval_round": lifecycles, "start_contact_tasks": lifecycles,
                "end_contact_tasks": lifecycles}
    if calls != expected:
        raise BenchFailure(f"engine: service calls {calls}, expected {expected}")
    return {
        "lifecycles": lifecycles,
        "seconds": wall,
        "lifecycles_per_s": lifecycles / wall if wall > 0 else 0.0,
        "ms_per_lifecycle": 1e3 * wall / lifecycles,
        "parse_ms": parse_ms,
        "final_state_bytes_gz": statistics.median(sizes),
        "serializer": workflows.SERIALIZER_VERSION,
    }


# --------------------------------------------------------------------------- reporting
def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cores": os.cpu_count(), "usable_cores": usable, "cpu": cpu,
        "python": sys.version.split()[0], "platform": platform.platform(),
    }
    from importlib.metadata import PackageNotFoundError, version

    try:
        info["spiffworkflow"] = version("SpiffWorkflow")
    except PackageNotFoundError:
        pass
    return info


def print_report(results: dict[str, Any]) -> None:
    h, e, m = results["http"], results["engine"], results["machine"]
    ratio = results["ratio"]
    rows = [
        (f"HTTP  ({h['clients']} clients, {results['workers']}x{results['threads']} threads)",
         f"{h['lifecycles_per_s']:8.1f}",
         f"p50 {h['p50_ms']:.1f} ms, p95 {h['p95_ms']:.1f} ms, {h['requests_per_s']:.0f} req/s, "
         f"n={h['completed']}, errors={h['errors']}"),
        ("engine (1 thread, dump/restore)", f"{e['lifecycles_per_s']:8.1f}",
         f"{e['ms_per_lifecycle']:.2f} ms/lifecycle, n={e['lifecycles']}"),
    ]
    print()
    print(f"{'':36} {'lifecycles/s':>12}")
    for label, rate, extra in rows:
        print(f"{label:36} {rate:>12}   {extra}")
    met = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"{'ratio http/engine':36} {ratio:12.2f}   target >= {TARGET_RATIO}: {met}")
    print(f"machine: {m['cores']} cores ({m['usable_cores']} usable), {m['cpu']}, Python {m['python']}, "
          f"SpiffWorkflow {m.get('spiffworkflow', '?')}")


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.lifecycle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lifecycles", "-n", type=int, default=None, help="lifecycles to time (default 300)")
    ap.add_argument("--clients", "-c", type=int, default=4, help="HTTP client threads (default 4)")
    ap.add_argument("--workers", "-w", type=int, default=2, help="gunicorn workers (default 2)")
    ap.add_argument("--threads", "-t", type=int, default=1,
                    help="threads per worker (default 1: sync workers; `milestones serve` uses 4)")
    ap.add_argument("--quick", action="store_true", help="N=40")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed lifecycles first (default 2 x workers, min 4)")
    ap.add_argument("--samples", type=int, default=20,
                    help="milestones whose end state is checked (default 20)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--keep-log", metavar="PATH", help="copy the server log here")
    args = ap.parse_args(argv)
    if args.lifecycles is None:
        args.lifecycles = 40 if args.quick else 300
    if args.warmup is None:
        args.warmup = max(4, 2 * args.workers)
    if args.lifecycles < 1 or args.clients < 1 or args.workers < 1 or args.threads < 1:
        ap.error("--lifecycles, --clients, --workers and --threads must be >= 1")
    return args


def _sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    db_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB_URL)
    schema = f"bench_{os.getpid()}"
    info = machine_info()
    results: dict[str, Any] = {"machine": info, "workers": args.workers, "threads": args.threads, "schema": schema}

    tmp = tempfile.TemporaryDirectory(prefix="milestones-bench-")
    server: Server | None = None
    schema_created = False
    try:
        create_schema(db_url, schema)
        schema_created = True
        env = dict(os.environ)
        env.update(DATABASE_URL=_with_search_path(db_url, schema), MILESTONES_INSTANCE_DIR=tmp.name,
                   PYTHONUNBUFFERED="1")
        env.pop("REDIS_URL", None)
        port = free_port()
        server = Server(env, port, args.workers, Path(tmp.name) / "server.log", args.threads)
        print(f"schema {schema}; server on :{port} ({args.workers} workers x {args.threads} threads); "
              f"{args.lifecycles} lifecycles, {args.clients} clients", flush=True)
        server.start()
        server.wait_ready()
        tokens = {SUBMITTER: create_user(env, SUBMITTER, "contract-managers"),
                  APPROVER: create_user(env, APPROVER, APPROVER_GROUP)}

        results["http"] = run_http(server.base, tokens, args.lifecycles, args.clients, args.warmup,
                                   args.samples)
        h = results["http"]
        print(f"http: {h['completed']}/{h['lifecycles']} lifecycles in {h['seconds']:.2f}s, "
              f"{h['errors']} errors, {h['checked']} end states checked", flush=True)
        if args.keep_log:
            Path(args.keep_log).write_bytes(server.log_path.read_bytes())
        server.stop()  # the engine run gets the whole machine
        server = None

        results["engine"] = run_engine(args.lifecycles, warmup=5)
        print(f"engine: {args.lifecycles} lifecycles in {results['engine']['seconds']:.2f}s", flush=True)
        e_rate = results["engine"]["lifecycles_per_s"]
        results["ratio"] = h["lifecycles_per_s"] / e_rate if e_rate else 0.0
        results["target_ratio"] = TARGET_RATIO
        results["target_met"] = results["ratio"] >= TARGET_RATIO
        if h["completed"]:
            print_report(results)
        failed = h["errors"] > 0
        if failed:
            print(f"\nFAILED: {h['errors']} errors, e.g.:", file=sys.stderr)
            for message in h["error_samples"]:
                print("  " + message, file=sys.stderr)
        results["ok"] = not failed
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        results["ok"] = False
        return 130
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        results["ok"] = False
        results["failure"] = str(exc)
        return 1
    finally:
        if server is not None:
            if args.keep_log and server.log_path.exists():
                Path(args.keep_log).write_bytes(server.log_path.read_bytes())
            server.stop()
        if schema_created:
            try:
                drop_schema(db_url, schema)
            except Exception as exc:
                print(f"warning: could not drop schema {schema}: {exc}", file=sys.stderr)
        tmp.cleanup()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
