"""Bearer tokens are cached per process for a bounded time: revocation takes effect within the TTL."""

from __future__ import annotations

import time

from sqlalchemy import update

from app.models import ApiToken, User, utcnow
from app.services.identity import TokenCache


def test_a_revoked_token_stops_working_once_its_cache_entry_expires(app, make_user):
    app.extensions["milestones"].tokens = TokenCache(ttl=2.0)
    zoe = make_user("zoe", "finance")
    assert zoe.get("/tasks").status_code == 200  # cached now
    with app.extensions["milestones"].engine.begin() as conn:
        conn.execute(update(ApiToken).values(revoked_at=utcnow()))
    assert zoe.get("/tasks").status_code == 200  # still inside the window the README documents
    time.sleep(2.1)
    assert zoe.get("/tasks").status_code == 401
    assert zoe.get("/tasks").status_code == 401  # a refused token is never cached


def test_the_cache_is_bounded_and_forgets_the_least_recently_used():
    cache = TokenCache(ttl=60, size=2)
    for n in range(3):
        cache.put(f"h{n}", User(id=n, username=f"u{n}", display_name="", email=None, is_admin=False,
                                created_at=utcnow()))
    assert cache.user("h0") is None
    assert cache.user("h1").username == "u1" and cache.user("h2").username == "u2"
    cache.put("h3", User(id=3, username="u3", display_name="", email=None, is_admin=False, created_at=utcnow()))
    assert cache.user("h1") is None  # h2 was used more recently than h1
    assert cache.user("h2") is not None and cache.user("h3") is not None
