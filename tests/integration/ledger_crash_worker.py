"""A worker process for tests/integration/test_ledger_faults.py: completes one approval task through
the services (`approvals.complete_task` in a `UnitOfWork`) against DATABASE_URL, and stops dead at a
chosen point around the commit so that the test can SIGKILL it there.

    python ledger_crash_worker.py before-commit|after-commit <task id> <username>

before-commit: everything is flushed (ledger entries, outbox rows, the task, the instance), then it
prints `BEFORE_COMMIT {json of what its own transaction sees}` and sleeps instead of committing.
after-commit: the commit is made, then it prints `AFTER_COMMIT {...}` and sleeps instead of answering.

Only this script's copy of `UnitOfWork.commit_now` is patched; the application is not touched.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import func, select  # noqa: E402

from app import build_state  # noqa: E402
from app.config import Settings  # noqa: E402
from app.models import HumanTaskRow, OutboxMessage, User  # noqa: E402
from app.models.ledger import LedgerEntry  # noqa: E402
from app.services import approvals  # noqa: E402
from app.uow import UnitOfWork  # noqa: E402

HANG_SECONDS = 600


def seen(uow: UnitOfWork, task_id: str) -> dict[str, object]:
    """What this process's transaction holds (written, not necessarily committed)."""
    s = uow.s
    return {
        "releases": s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "release")),
        "instructions": s.scalar(select(func.count()).select_from(OutboxMessage)
                                 .where(OutboxMessage.event == "payment.instruction")),
        "task_status": s.scalar(select(HumanTaskRow.status).where(HumanTaskRow.id == task_id)),
    }


def main() -> None:
    mode, task_id, username = sys.argv[1], sys.argv[2], sys.argv[3]
    assert mode in ("before-commit", "after-commit"), mode
    state = build_state(Settings.from_env())
    with UnitOfWork(state.session_factory) as lookup:
        user = lookup.s.scalar(select(User).where(User.username == username))
        assert user is not None, username
        lookup.s.expunge(user)

    original = UnitOfWork.commit_now
    calls = {"n": 0}

    def commit_now(self: UnitOfWork) -> None:
        calls["n"] += 1
        if mode == "before-commit":
            print("BEFORE_COMMIT " + json.dumps(seen(self, task_id)), flush=True)
            time.sleep(HANG_SECONDS)  # killed here: the transaction never commits
            raise SystemExit("not killed")
        original(self)
        with UnitOfWork(state.session_factory) as check:
            print("AFTER_COMMIT " + json.dumps(seen(check, task_id)), flush=True)
        time.sleep(HANG_SECONDS)  # killed here: committed, never answered
        raise SystemExit("not killed")

    UnitOfWork.commit_now = commit_now  # type: ignore[method-assign]
    with UnitOfWork(state.session_factory, actor_id=user.id) as uow:
        print("COMPLETING", flush=True)
        approvals.complete_task(uow, state.deployments, user, task_id, decision="approve")
    print(f"RETURNED commits={calls['n']}", flush=True)


if __name__ == "__main__":
    main()
