"""Users, groups and bearer tokens."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import make_transient_to_detached

from ..errors import Conflict, NotFound, Unauthenticated, ValidationFailed
from ..models import ApiToken, Group, Membership, User
from ..uow import UnitOfWork
from . import audit, routing

TOKEN_PREFIX = "cm_"


def hash_token(token: str) -> str:
    # Tokens are 256-bit random secrets, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_group(uow: UnitOfWork, name: str, description: str = "") -> Group:
    name = name.strip()
    if not name:
        raise ValidationFailed("group name is empty", {"group": ["must not be empty"]})
    group = uow.s.scalar(select(Group).where(Group.name == name))
    if group is None:
        group = Group(name=name, description=description)
        uow.s.add(group)
        uow.flush()
        audit.record(uow, "group.created", "group", group.id, after={"name": name})
    return group


def create_user(uow: UnitOfWork, username: str, groups: list[str], *, display_name: str = "",
                email: str | None = None, is_admin: bool = False) -> User:
    """Create a user in the given groups (created when missing). Raises Conflict if the name is taken."""
    username = username.strip()
    if not username or len(username) > 80:
        raise ValidationFailed("invalid username", {"username": ["1 to 80 characters"]})
    if uow.s.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, display_name=display_name or username, email=email, is_admin=is_admin)
    uow.s.add(user)
    uow.flush()
    for name in groups:
        add_member(uow, user, ensure_group(uow, name))
    audit.record(uow, "user.created", "user", user.id, after={"username": username, "groups": groups})
    if groups:
        uow.flush()
        # a new member gains the open approval seats of their groups at once
        routing.reproject_levels(uow, routing.open_levels_of_groups(uow, groups), reason=f"{username} created")
    return user


def add_member(uow: UnitOfWork, user: User, group: Group) -> None:
    exists = uow.s.get(Membership, (user.id, group.id))
    if exists is None:
        uow.s.add(Membership(user_id=user.id, group_id=group.id))
        audit.record(uow, "membership.added", "group", group.id, after={"user": user.username})


def user_named(uow: UnitOfWork, username: str, field: str) -> User:
    """The user called `username`; ValidationFailed naming `field` when there is none (bad input, 422)."""
    user = uow.s.scalar(select(User).where(User.username == username))
    if user is None:
        raise ValidationFailed(f"there is no user {username!r}", {field: [f"unknown user {username!r}"]})
    return user


def get_user(uow: UnitOfWork, username: str) -> User:
    user = uow.s.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user


def issue_token(uow: UnitOfWork, user: User, name: str = "cli") -> str:
    """Create a bearer token for `user`; the secret is returned once and only its hash is stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    uow.s.add(ApiToken(user_id=user.id, token_hash=hash_token(token), name=name))
    audit.record(uow, "token.issued", "user", user.id, after={"name": name})
    return token


def authenticate(uow: UnitOfWork, token: str) -> User:
    row = uow.s.execute(
        select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.token_hash == hash_token(token))
    ).first()
    if row is None or row[0].revoked_at is not None:
        raise Unauthenticated("the bearer token is unknown or revoked")
    return row[1]


USER_COLUMNS = ("id", "username", "display_name", "email", "is_admin", "created_at")


class TokenCache:
    """Which user a token hash belongs to, per process, for `ttl` seconds; at most `size` tokens
    (least recently used ones leave first). Only valid tokens are cached, never the secrets.

    So a token that is revoked (or a user that is deleted or stops being an admin) in the
    database stays accepted by a process that cached it for up to `ttl` seconds.
    """

    def __init__(self, ttl: float = 30.0, size: int = 1024):
        self.ttl, self.size = ttl, size
        self._entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def user(self, token_hash: str) -> User | None:
        """A detached User for a cached, still fresh entry (a new object per call)."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(token_hash)
            if entry is None:
                return None
            if now - entry[0] >= self.ttl:
                del self._entries[token_hash]
                return None
            self._entries.move_to_end(token_hash)
            values = entry[1]
        user = User(**values)
        make_transient_to_detached(user)  # as if loaded and expunged: no session, no lazy loads
        return user

    def put(self, token_hash: str, user: User) -> None:
        values = {name: getattr(user, name) for name in USER_COLUMNS}
        with self._lock:
            self._entries[token_hash] = (time.monotonic(), values)
            self._entries.move_to_end(token_hash)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_GROUP_NAMES = select(Group.name).join(Membership, Membership.group_id == Group.id).where(
    Membership.user_id == bindparam("user_id"))


def group_names(uow: UnitOfWork, user_id: int) -> list[str]:
    return list(uow.s.scalars(_GROUP_NAMES, {"user_id": user_id}))
