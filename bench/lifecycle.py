"""End-to-end lifecycle benchmark: the HTTP service on PostgreSQL against the bare engine.

    python -m bench.lifecycle [--lifecycles N] [--clients C] [--workers W] [--threads T]
                              [--rounds R] [--rework-milestones M] [--quick] [--json PATH]

One run does these measurements:

* HTTP: a fresh PostgreSQL schema in database `test` (BENCH_DATABASE_URL), the real server
  (`python -m app.cli serve`, gunicorn with W workers of T threads; T=1, the default, is sync
  workers) and C client threads driving N milestone lifecycles: create milestone -> link an invoice -> activate ->
  submit (submitter) -> approve (finance approver), five requests. The amount (50000.00,
  financial) routes to one approval level of finance-managers with quorum "any": the submission
  opens one review seat whose candidate users are the group's eligible members. Threads (gthread,
  what `serve` runs by default) measured no better on 2 cores: the run is CPU-bound there
  (workers, PostgreSQL and the clients share the cores), and a kept-alive client connection stays
  with one worker, so the load can split unevenly between workers. The end state (completed,
  funds released) of every warm-up milestone and of a sample of the others is checked.
* Rework rounds (HTTP, same server and schema, after the lifecycles): the cost of a step must not
  grow with the number of rounds. M milestones (default 3) are submitted, then driven through R
  rework rounds each (default R=50, 20 with --quick, --rounds 0 skips it), interleaved round by
  round to spread noise over all of them, by one client: the approver declines the open seat
  (timed) -> the submitter resubmits (timed; that completes the rework task and starts the next
  round as a new workflow instance). After an untimed warm-up milestone, every step's latency is
  recorded per round; the report compares the median of the first 5 rounds with the median of the
  last 5 rounds (samples of all M milestones pooled) for each step, target ratio <= 1.5, and gives
  the least-squares slope in ms per round. As the two ends are minutes apart, the load of a shared
  machine can drift in between: M fresh control milestones go through their rounds 1-5 interleaved
  with the last 5 rounds, and the report also gives last rounds / control at the same time. The
  last seats are then approved and the end states (completed, round R + 1) checked.
* Engine: the same diagrams in-process, single-threaded, through `workflows.Instance`, with the
  state dumped and restored between the steps as the service does, and a service handler that
  only returns small dicts (the routing operations answer one level of one seat, as the service
  does for this amount). The same rework rounds are timed there too, step by step (restore,
  complete, dump; a resubmission also starts the next round's instance).

It reports lifecycles/s for both, their ratio (http/engine; target >= 0.5), the p50/p95 latency
of one HTTP lifecycle, the rework-round step times, and machine info. Any non-2xx answer or
failed assertion fails the run (targets that are not met are reported, they do not fail it).
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
TARGET_ROUND_GROWTH = 1.5  # step time at the last rounds / at the first rounds
ROUND_WINDOW = 5  # rounds at each end whose samples are compared
REQUESTS_PER_LIFECYCLE = 5  # create, link an invoice, activate, submit, complete
AMOUNT = "50000.00"  # financial, 10000 <= amount < 100000 -> DMN routes to finance-managers
APPROVER_GROUP = "finance-managers"
SUBMITTER = "bench-submitter"
APPROVER = "bench-approver"
DECLINE_COMMENT = "bench: please rework"


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
            sent = f" {json.dumps(body)}" if body is not None else ""
            raise BenchFailure(f"{method} {path}{sent} -> {r.status_code}: {r.text[:600]}")
        return r.json()

    def timed(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[Any, float]:
        t0 = time.perf_counter()
        answer = self.call(method, path, headers, body)
        return answer, time.perf_counter() - t0

    def create_active(self, contract_id: int, code: str) -> int:
        milestone = self.call("POST", "/milestones", self.submitter, {
            "contract_id": contract_id, "code": code, "type": "financial", "amount": AMOUNT,
            "currency": "EUR",
        })
        mid = int(milestone["id"])
        # the money its approval releases: one invoice held in the ledger until then
        self.call("POST", f"/contracts/{contract_id}/transactions", self.submitter, {
            "kind": "invoice", "amount": AMOUNT, "currency": "EUR", "occurred_on": "2026-12-01", "milestone_id": mid,
        })
        self.call("POST", f"/milestones/{mid}/activation", self.submitter)
        return mid

    def lifecycle(self, contract_id: int, code: str) -> int:
        mid = self.create_active(contract_id, code)
        submission = self.call("POST", f"/milestones/{mid}/submission", self.submitter)
        task_id = review_seat(submission, mid, round_=1)
        self.approve(task_id)
        return mid

    def approve(self, task_id: str) -> None:
        done = self.call("POST", f"/tasks/{task_id}/completion", self.approver, {"decision": "approve"})
        check_completed(done, task_id, "approve")

    def check_final(self, mid: int, round_: int = 1) -> None:
        detail = self.call("GET", f"/milestones/{mid}", self.submitter)
        if detail.get("status") != "completed":
            raise BenchFailure(f"milestone {mid} is {detail.get('status')!r}, expected 'completed'")
        if detail.get("round") != round_:
            raise BenchFailure(f"milestone {mid} ended in round {detail.get('round')!r}, expected {round_}")
        if detail.get("release") is None:
            raise BenchFailure(f"milestone {mid} has no fund release")
        if detail["release"].get("amount") != AMOUNT:
            released = detail["release"].get("amount")
            raise BenchFailure(f"milestone {mid} released {released}, expected {AMOUNT}")


def review_seat(submission: dict[str, Any], mid: int, round_: int) -> str:
    """The one review seat a submission (or resubmission) of milestone `mid` must open: level 1 of
    finance-managers, the approver among its candidate users. Returns its task id."""
    tasks = submission.get("open_tasks") or []
    where = f"milestone {mid} round {round_}"
    if submission.get("round") != round_:
        raise BenchFailure(f"{where}: submission answered round {submission.get('round')!r}")
    if len(tasks) != 1:
        raise BenchFailure(f"{where}: submission opened {len(tasks)} tasks, expected one seat: {tasks}")
    seat = tasks[0]
    if seat.get("bpmn_id") != "review_milestone" or seat.get("level") != 1 or seat.get("seat") is None:
        raise BenchFailure(f"{where}: expected seat of level 1 of review_milestone, got {seat}")
    if seat.get("group") != APPROVER_GROUP:
        raise BenchFailure(f"{where}: seat routed to {seat.get('group')!r}, expected {APPROVER_GROUP}")
    if APPROVER not in (seat.get("candidate_users") or []) or SUBMITTER in (seat.get("candidate_users") or []):
        raise BenchFailure(f"{where}: seat candidate users {seat.get('candidate_users')}, expected "
                           f"{APPROVER} (and not the submitter)")
    return str(seat["id"])


def check_completed(answer: dict[str, Any], task_id: str, what: str) -> None:
    if answer.get("status") != "completed":
        raise BenchFailure(f"task {task_id} ({what}) answered status {answer.get('status')!r}")


def create_contract(client: Client, name: str) -> int:
    tag = f"{os.getpid()}-{int(time.time())}-{name}"
    account = client.call("POST", "/accounts", client.submitter, {"name": f"bench account {tag}"})
    contract = client.call("POST", "/contracts", client.submitter, {
        "account_id": account["id"], "number": f"BENCH-{tag}", "title": f"{name} benchmark",
        "value": "1000000000000.00", "currency": "EUR",
    })
    return int(contract["id"])


def run_http(base: str, tokens: dict[str, str], lifecycles: int, clients: int, warmup: int,
             samples: int) -> dict[str, Any]:
    stats = HttpStats()
    setup = Client(base, tokens[SUBMITTER], tokens[APPROVER], stats)
    contract_id = create_contract(setup, "lifecycle")

    warmed: list[int] = []
    for i in range(warmup):  # warm every worker's deployment cache, connection pool, imports
        warmed.append(setup.lifecycle(contract_id, f"W-{i}"))

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

    # Verify the end state outside the timed window: every warm-up milestone (the first requests of
    # each worker, where per-process caches are cold) and a sample of the timed ones.
    sample = warmed + random.Random(0).sample(stats.milestone_ids, min(samples, len(stats.milestone_ids)))
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


# --------------------------------------------------------------------------- rework rounds
def round_window(rounds: int, window: int = ROUND_WINDOW) -> int:
    """Rounds compared at each end: `window`, fewer when R < 2 x window (the ends never overlap but for R = 1)."""
    return max(1, min(window, rounds // 2))


def step_summary(per_milestone: list[list[float]], control: list[list[float]] | None = None,
                 window: int = ROUND_WINDOW) -> dict[str, Any]:
    """Step time (seconds in, ms out) of the first `window` rounds against the last `window`: the
    median of the samples of every milestone at each end, their ratio, the per-round medians
    across milestones and the least-squares slope over all samples (ms per round). `control`:
    the first rounds of fresh milestones measured interleaved with the last rounds, the same
    comparison without the drift of the machine's load over the run."""
    rounds = min(len(r) for r in per_milestone)
    if rounds == 0:
        return {"rounds": 0}
    k = round_window(rounds, window)
    first = [1e3 * r[i] for r in per_milestone for i in range(k)]
    last = [1e3 * r[i] for r in per_milestone for i in range(rounds - k, rounds)]
    first_ms, last_ms = statistics.median(first), statistics.median(last)
    ratio = last_ms / first_ms if first_ms > 0 else float("inf")
    slope = 0.0
    if rounds >= 2:
        xs = [float(i + 1) for r in per_milestone for i in range(rounds)]
        ys = [1e3 * r[i] for r in per_milestone for i in range(rounds)]
        slope = statistics.linear_regression(xs, ys).slope
    summary: dict[str, Any] = {
        "rounds": rounds,
        "milestones": len(per_milestone),
        "first_rounds": [1, k],
        "last_rounds": [rounds - k + 1, rounds],
        "samples_per_window": len(first),
        "first_ms": first_ms,
        "last_ms": last_ms,
        "ratio": ratio,
        "target": TARGET_ROUND_GROWTH,
        "target_met": ratio <= TARGET_ROUND_GROWTH,
        "slope_ms_per_round": slope,
        "max_ms": 1e3 * max(max(r[:rounds]) for r in per_milestone),
        "per_round_median_ms": [statistics.median(1e3 * r[i] for r in per_milestone) for i in range(rounds)],
    }
    samples = [1e3 * t for r in control or [] for t in r]
    if samples:
        control_ms = statistics.median(samples)
        summary["control"] = {"rounds": [1, min(len(r) for r in control or [])], "samples": len(samples),
                              "ms": control_ms, "ratio": last_ms / control_ms if control_ms > 0 else float("inf")}
    return summary


def rework_round(client: Client, mid: int, seat: str, round_: int) -> tuple[str, float, float]:
    """Round `round_` of milestone `mid`: the approver declines its open seat (timed), then the
    submitter resubmits (timed). Returns the next round's seat and the two step times (s)."""
    where = f"milestone {mid} round {round_}"
    done, t_decline = client.timed("POST", f"/tasks/{seat}/completion", client.approver,
                                   {"decision": "decline", "comment": DECLINE_COMMENT})
    check_completed(done, seat, f"decline, {where}")
    if done.get("decision") != "decline":
        raise BenchFailure(f"{where}: declined seat answered decision {done.get('decision')!r}")
    submission, t_resubmit = client.timed("POST", f"/milestones/{mid}/submission", client.submitter)
    if submission.get("resumed") is not True:
        raise BenchFailure(f"{where}: resubmission answered resumed={submission.get('resumed')!r}")
    status = (submission.get("milestone") or {}).get("status")
    if status != "submitted":
        raise BenchFailure(f"{where}: resubmitted milestone is {status!r}, expected 'submitted'")
    return review_seat(submission, mid, round_ + 1), t_decline, t_resubmit


def run_rework(base: str, tokens: dict[str, str], rounds: int, milestones: int, warmup_rounds: int) -> dict[str, Any]:
    """M milestones through R decline -> resubmit rounds each, interleaved, one client; during the
    last k rounds, M fresh control milestones go through their rounds 1..k, each right after the
    round of an old one. Then every last seat is approved and the end states are checked (outside
    the timed steps)."""
    client = Client(base, tokens[SUBMITTER], tokens[APPROVER], HttpStats())
    k = round_window(rounds)
    decline: list[list[float]] = [[] for _ in range(milestones)]
    resubmit: list[list[float]] = [[] for _ in range(milestones)]
    control_decline: list[list[float]] = [[] for _ in range(milestones)]
    control_resubmit: list[list[float]] = [[] for _ in range(milestones)]
    errors: list[str] = []
    wall = 0.0
    try:
        contract_id = create_contract(client, "rework")
        # Untimed warm-up: the decline and resubmission code paths of every worker.
        warm = client.create_active(contract_id, "RW-0")
        seat = review_seat(client.call("POST", f"/milestones/{warm}/submission", client.submitter), warm, 1)
        for r in range(1, warmup_rounds + 1):
            seat, _, _ = rework_round(client, warm, seat, r)
        client.approve(seat)
        client.check_final(warm, warmup_rounds + 1)

        mids = [client.create_active(contract_id, f"R-{j}") for j in range(milestones)]
        controls = [client.create_active(contract_id, f"RC-{j}") for j in range(milestones)]
        seats = {mid: review_seat(client.call("POST", f"/milestones/{mid}/submission", client.submitter), mid, 1)
                 for mid in mids + controls}
        t0 = time.perf_counter()
        for r in range(1, rounds + 1):
            for j, mid in enumerate(mids):
                seats[mid], t_decline, t_resubmit = rework_round(client, mid, seats[mid], r)
                decline[j].append(t_decline)
                resubmit[j].append(t_resubmit)
                if r > rounds - k:
                    c = controls[j]
                    seats[c], t_decline, t_resubmit = rework_round(client, c, seats[c], r - (rounds - k))
                    control_decline[j].append(t_decline)
                    control_resubmit[j].append(t_resubmit)
        wall = time.perf_counter() - t0
        for mid in mids + controls:
            client.approve(seats[mid])
            client.check_final(mid, (rounds if mid in mids else k) + 1)
    except Exception as exc:  # the run fails at the end; what was measured is still reported
        errors.append(f"rework: {type(exc).__name__}: {exc}")
    return {
        "rounds": rounds,
        "milestones": milestones,
        "warmup_rounds": warmup_rounds,
        "seconds": wall,
        "decline": step_summary(decline, control_decline),
        "resubmit": step_summary(resubmit, control_resubmit),
        "errors": len(errors),
        "error_samples": errors[:10],
    }


# --------------------------------------------------------------------------- bare engine
def run_engine(lifecycles: int, warmup: int, rounds: int = 0, milestones: int = 0) -> dict[str, Any]:
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
        if call.operation == "plan_approval_levels":
            return {"levels": [1]}  # the table routes this amount to one level
        if call.operation == "open_approval_level":
            return {"level": 1, "group": APPROVER_GROUP, "quorum": "any", "required": 1, "seats": 1,
                    "eligible": 1, "on_decline": "first"}
        if call.operation == "close_approval_level":
            # The service closes the level with the outcome of its vote count, which the
            # completion carried as level_outcome (one seat, quorum any: the one vote decides).
            result = call.data.get("level_outcome")
            if result not in ("approved", "declined"):
                raise BenchFailure(f"engine: level closed with outcome {result!r}")
            return {"level": 1, "outcome": result, "approvals": int(result == "approved"),
                    "declines": int(result == "declined"), "next_level": None}
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

    def start_round(i: int, round_: int) -> tuple[bytes, str]:
        """Start approval round `round_` of milestone i; returns its state and its one seat's id."""
        # The same start data as app.services.approvals._start_round.
        data = {
            "milestone_id": i + 1,
            "milestone_code": f"L-{i}",
            "milestone_type": "financial",
            "amount": Decimal(AMOUNT),
            "currency": "EUR",
            "contract_id": 1,
            "contract_number": "BENCH-1",
            "contract_value": Decimal("1000000000000.00"),
            "account_id": 1,
            "account_name": "bench account",
            "attributes": {},
            "risk": None,
            "submitted_by": SUBMITTER,
            "rework_to": [SUBMITTER],
            "round": round_,
            "days_to_due": 9999,  # no due date
            "retention_of": None,
        }
        inst = Instance.start(deployment, "milestone_approval", data, handler)
        blob = inst.dump()
        inst.next_timer_due()
        ready = inst.ready_human_tasks()  # the service projects these on every save
        if (len(ready) != 1 or ready[0].bpmn_id != "review_milestone" or not ready[0].multi_instance
                or ready[0].candidate_groups != (APPROVER_GROUP,)):
            raise BenchFailure(f"engine: unexpected tasks after start of round {round_}: {ready}")
        return blob, ready[0].id

    def complete(blob: bytes, task_id: str, payload: dict[str, Any]) -> tuple[Any, bytes]:
        inst = Instance.restore(deployment, blob, SERIALIZER_VERSION, handler)
        inst.complete(task_id, payload)
        blob = inst.dump()
        inst.next_timer_due()
        return inst, blob

    approve = {"completed_by": APPROVER, "decision": "approve", "level_outcome": "approved"}
    decline = {"completed_by": APPROVER, "decision": "decline", "comment": DECLINE_COMMENT,
               "level_outcome": "declined"}

    def one(i: int) -> int:
        # The same diagrams and steps as the HTTP lifecycle: the milestone's lifecycle instance
        # (created, activated, submitted, told of the completion) and one approval round.
        lifecycle = Instance.start(deployment, "milestone_lifecycle", {"milestone_id": i + 1}, handler)
        lc_blob = lifecycle.dump()
        lc_blob = lifecycle_step(lc_blob, "activate")
        lc_blob = lifecycle_step(lc_blob, "submit")
        blob, seat = start_round(i, 1)
        inst, blob = complete(blob, seat, approve)
        if inst.ready_human_tasks():
            raise BenchFailure("engine: tasks left after approval")
        if not inst.is_completed:
            raise BenchFailure("engine: instance did not complete")
        if not (inst.data().get("release") or {}).get("release_id"):
            raise BenchFailure("engine: no fund release in the end data")
        lc_blob = lifecycle_step(lc_blob, "approval_completed")
        return len(blob)

    def decline_step(blob: bytes, seat: str, round_: int) -> tuple[bytes, str]:
        inst, blob = complete(blob, seat, decline)
        ready = inst.ready_human_tasks()
        if len(ready) != 1 or ready[0].bpmn_id != "rework_milestone" or ready[0].candidate_users != (SUBMITTER,):
            raise BenchFailure(f"engine: unexpected tasks after the decline of round {round_}: {ready}")
        return blob, ready[0].id

    def resubmit_step(i: int, blob: bytes, rework: str, round_: int) -> tuple[bytes, str]:
        inst, _ = complete(blob, rework, {"completed_by": SUBMITTER, "comment": "resubmitted"})
        if not inst.is_completed or inst.ready_human_tasks():
            raise BenchFailure(f"engine: round {round_} did not end at its resubmission")
        return start_round(i, round_ + 1)  # as the service: the next round is a new instance

    for i in range(warmup):
        one(-1 - i)
    calls.clear()
    t0 = time.perf_counter()
    sizes = [one(i) for i in range(lifecycles)]
    wall = time.perf_counter() - t0
    expected = {"set_milestone_status": 5 * lifecycles, "release_funds": lifecycles,
                "plan_approval_levels": lifecycles, "open_approval_level": lifecycles,
                "close_approval_level": lifecycles,
                "start_approval_round": lifecycles, "start_contact_tasks": lifecycles,
                "end_contact_tasks": lifecycles}
    if calls != expected:
        raise BenchFailure(f"engine: service calls {calls}, expected {expected}")
    results: dict[str, Any] = {
        "lifecycles": lifecycles,
        "seconds": wall,
        "lifecycles_per_s": lifecycles / wall if wall > 0 else 0.0,
        "ms_per_lifecycle": 1e3 * wall / lifecycles,
        "parse_ms": parse_ms,
        "final_state_bytes_gz": statistics.median(sizes),
        "serializer": workflows.SERIALIZER_VERSION,
    }

    if rounds > 0 and milestones > 0:
        # The rework rounds of the HTTP part, step by step, milestones interleaved.
        blob, seat = start_round(9_999, 1)  # untimed warm-up: the decline and resubmission paths
        for r in range(1, 4):
            blob, rework = decline_step(blob, seat, r)
            blob, seat = resubmit_step(9_999, blob, rework, r)
        ids = list(range(10_000, 10_000 + milestones))
        states = [start_round(i, 1) for i in ids]
        first_state_bytes = len(states[0][0])
        times_decline: list[list[float]] = [[] for _ in ids]
        times_resubmit: list[list[float]] = [[] for _ in ids]
        calls.clear()
        t0 = time.perf_counter()
        for r in range(1, rounds + 1):
            for j, i in enumerate(ids):
                blob, seat = states[j]
                t1 = time.perf_counter()
                blob, rework = decline_step(blob, seat, r)
                t2 = time.perf_counter()
                states[j] = resubmit_step(i, blob, rework, r)
                t3 = time.perf_counter()
                times_decline[j].append(t2 - t1)
                times_resubmit[j].append(t3 - t2)
        rework_wall = time.perf_counter() - t0
        n = rounds * milestones
        expected = {"close_approval_level": n, "set_milestone_status": 2 * n, "start_next_round": n,
                    "plan_approval_levels": n, "open_approval_level": n}
        if calls != expected:
            raise BenchFailure(f"engine: rework service calls {calls}, expected {expected}")
        results["rework"] = {
            "rounds": rounds, "milestones": milestones, "seconds": rework_wall,
            "decline": step_summary(times_decline), "resubmit": step_summary(times_resubmit),
            # the state a round starts with, at round 1 and at round R + 1 (bounded: one round each)
            "start_state_bytes_gz": [first_state_bytes, len(states[0][0])],
        }
    return results


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


def _span(rounds: list[int]) -> str:
    return f"round {rounds[0]}" if rounds[0] == rounds[1] else f"rounds {rounds[0]}-{rounds[1]}"


def _round_line(label: str, s: dict[str, Any]) -> str:
    met = "met" if s["target_met"] else "NOT met"
    return (f"{label} 1\u2192{s['rounds']}: {s['first_ms']:.2f} ms \u2192 {s['last_ms']:.2f} ms "
            f"(\u00d7{s['ratio']:.2f}, target \u2264 {s['target']}: {met}; "
            f"slope {s['slope_ms_per_round']:+.3f} ms/round, max {s['max_ms']:.1f} ms)")


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
    rework = results.get("rework")
    if rework and rework["decline"].get("rounds"):
        d = rework["decline"]
        print()
        print(f"rework rounds (HTTP, 1 client): {rework['milestones']} milestones x {d['rounds']} rounds, "
              f"interleaved, after {rework['warmup_rounds']} warm-up rounds; step time = median of "
              f"{_span(d['first_rounds'])} vs {_span(d['last_rounds'])}, "
              f"{d['samples_per_window']} samples each (all milestones pooled)")
        for step in ("decline", "resubmit"):
            print(_round_line(f"rework rounds: {step} step", rework[step]))
        if "control" in d:
            c = rework["decline"]["control"], rework["resubmit"]["control"]
            last = _span(d["last_rounds"])
            print(f"  control at the same time ({_span(c[0]['rounds'])} of {rework['milestones']} fresh "
                  f"milestones, interleaved with {last}): decline {c[0]['ms']:.2f} ms, {last} "
                  f"\u00d7{c[0]['ratio']:.2f} of it; resubmit {c[1]['ms']:.2f} ms, \u00d7{c[1]['ratio']:.2f}")
    engine_rework = e.get("rework")
    if engine_rework:
        for step in ("decline", "resubmit"):
            print(_round_line(f"engine rework: {step} step", engine_rework[step]))
        sizes = engine_rework["start_state_bytes_gz"]
        print(f"engine rework: state at the start of round 1 / round {engine_rework['rounds'] + 1}: "
              f"{sizes[0]} / {sizes[1]} bytes gz")
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
    ap.add_argument("--quick", action="store_true", help="N=40, R=20")
    ap.add_argument("--rounds", "-r", type=int, default=None,
                    help="rework rounds per milestone (default 50; 0 skips the rework measurement)")
    ap.add_argument("--rework-milestones", "-m", type=int, default=3,
                    help="milestones driven through the rework rounds, interleaved (default 3)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed lifecycles first (default 2 x workers, min 4)")
    ap.add_argument("--samples", type=int, default=20,
                    help="timed milestones whose end state is checked, besides every warm-up one (default 20)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--keep-log", metavar="PATH", help="copy the server log here")
    args = ap.parse_args(argv)
    if args.lifecycles is None:
        args.lifecycles = 40 if args.quick else 300
    if args.warmup is None:
        args.warmup = max(4, 2 * args.workers)
    if args.rounds is None:
        args.rounds = 20 if args.quick else 50
    if args.lifecycles < 1 or args.clients < 1 or args.workers < 1 or args.threads < 1:
        ap.error("--lifecycles, --clients, --workers and --threads must be >= 1")
    if args.rounds < 0 or args.rework_milestones < 1:
        ap.error("--rounds must be >= 0 and --rework-milestones >= 1")
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
        rework_plan = (f"; {args.rework_milestones} milestones x {args.rounds} rework rounds" if args.rounds
                       else "; no rework rounds")
        print(f"schema {schema}; server on :{port} ({args.workers} workers x {args.threads} threads); "
              f"{args.lifecycles} lifecycles, {args.clients} clients{rework_plan}", flush=True)
        server.start()
        server.wait_ready()
        tokens = {SUBMITTER: create_user(env, SUBMITTER, "contract-managers"),
                  APPROVER: create_user(env, APPROVER, APPROVER_GROUP)}

        results["http"] = run_http(server.base, tokens, args.lifecycles, args.clients, args.warmup,
                                   args.samples)
        h = results["http"]
        print(f"http: {h['completed']}/{h['lifecycles']} lifecycles in {h['seconds']:.2f}s, "
              f"{h['errors']} errors, {h['checked']} end states checked", flush=True)
        errors = list(h["error_samples"])
        if args.rounds:
            rework = results["rework"] = run_rework(server.base, tokens, args.rounds, args.rework_milestones,
                                                    warmup_rounds=max(3, 2 * args.workers))
            errors += rework["error_samples"]
            print(f"rework: {rework['decline'].get('rounds', 0)}/{args.rounds} rounds x {args.rework_milestones} "
                  f"milestones in {rework['seconds']:.2f}s, {rework['errors']} errors", flush=True)
        if errors:
            print(f"server log (last lines):\n{server.log_tail(30)}", file=sys.stderr)
        if args.keep_log:
            Path(args.keep_log).write_bytes(server.log_path.read_bytes())
        server.stop()  # the engine run gets the whole machine
        server = None

        results["engine"] = run_engine(args.lifecycles, warmup=5, rounds=args.rounds,
                                       milestones=args.rework_milestones)
        print(f"engine: {args.lifecycles} lifecycles in {results['engine']['seconds']:.2f}s", flush=True)
        e_rate = results["engine"]["lifecycles_per_s"]
        results["ratio"] = h["lifecycles_per_s"] / e_rate if e_rate else 0.0
        results["target_ratio"] = TARGET_RATIO
        results["target_met"] = results["ratio"] >= TARGET_RATIO
        if "rework" in results:
            results["rework_targets_met"] = all(results["rework"][step].get("target_met", False)
                                                for step in ("decline", "resubmit"))
        if h["completed"]:
            print_report(results)
        n_errors = h["errors"] + (results["rework"]["errors"] if "rework" in results else 0)
        failed = n_errors > 0
        if failed:
            print(f"\nFAILED: {n_errors} errors, e.g.:", file=sys.stderr)
            for message in errors[:10]:
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
