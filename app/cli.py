"""The `milestones` command: serve, migrate, deploy, users, demo."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .config import Settings


@contextmanager
def _opened(settings: Settings | None = None) -> Iterator[Any]:
    """App state for one command; its connection pool is closed when the command ends."""
    state = _state(settings)
    try:
        yield state
    finally:
        state.engine.dispose()


def _state(settings: Settings | None = None) -> Any:
    from . import build_state

    return build_state(settings or Settings.from_env())


def prepare_database(state: Any) -> None:
    """Migrate the schema and deploy the bundled diagrams when their content is new."""
    from . import migrate
    from .services.runtime import deploy_directories
    from .uow import UnitOfWork

    migrate.upgrade(state.engine)
    with UnitOfWork(state.session_factory) as uow:
        record, created = deploy_directories(uow, state.deployments, state.settings.bpmn_dirs)
    click.echo(f"deployment v{record.version} {record.hash[:12]} ({'new' if created else 'current'})", err=True)


@click.group()
def main() -> None:
    """Contract Milestones: milestones approved through BPMN/DMN workflows."""


# --------------------------------------------------------------------------- serve
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn worker processes")
@click.option("--threads", default=4, show_default=True, type=int, help="threads per worker")
@click.option("--demo", is_flag=True, help="load the demo data (and print its tokens) before serving")
def serve(host: str, port: int, workers: int, threads: int, demo: bool) -> None:
    """Run the API with gunicorn (SQLite in ./instance unless DATABASE_URL is set); migrates first."""
    state = _state()
    prepare_database(state)
    if demo:
        _load_demo(state)
    click.echo(f"database: {state.engine.url.render_as_string(hide_password=True)}", err=True)
    click.echo(f"serving on http://{host}:{port}/api/v1 (docs: http://{host}:{port}/api/v1/docs)", err=True)
    embedded = not state.settings.redis_url
    if embedded:
        notifications = state.settings.notifications
        mail = (f"SMTP {notifications.smtp_host}:{notifications.smtp_port}" if notifications.smtp_host
                else f"no SMTP server: e-mails are logged and appended to {state.settings.instance_dir / 'mail.log'}")
        click.echo(f"no REDIS_URL: timers and notifications run in an embedded scheduler ({mail})", err=True)
    state.engine.dispose()
    run_gunicorn(host, port, workers, threads, embedded_scheduler=embedded)


def _start_scheduler(worker: Any) -> None:
    # gunicorn's post_worker_init: every worker starts one; a lease row lets one of them work.
    from .scheduler import start_embedded

    worker.milestones_scheduler = start_embedded(worker.wsgi)


def _stop_scheduler(worker: Any) -> None:
    scheduler = getattr(worker, "milestones_scheduler", None)
    if scheduler is not None:
        scheduler.stop(timeout=5)


def run_gunicorn(host: str, port: int, workers: int, threads: int, *, embedded_scheduler: bool = False) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread" if threads > 1 else "sync")
            self.cfg.set("accesslog", "-")
            self.cfg.set("graceful_timeout", 10)
            if embedded_scheduler:
                self.cfg.set("post_worker_init", _start_scheduler)
                self.cfg.set("worker_exit", lambda _server, worker: _stop_scheduler(worker))

        def load(self) -> Any:
            from . import create_app

            return create_app()

    Server().run()


# --------------------------------------------------------------------------- celery
@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a Celery worker (needs REDIS_URL); extra arguments go to `celery worker`."""
    _celery(["worker", "--loglevel=INFO", *ctx.args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Run Celery beat: fires due workflow timers (every 30 s) and sweeps the outbox (every 15 s); needs REDIS_URL."""
    _celery(["beat", "--loglevel=INFO", *ctx.args])


def _celery(args: list[str]) -> None:
    from .celery_app import celery

    celery.start(argv=args)


# --------------------------------------------------------------------------- db
@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration (idempotent)."""
    from . import migrate

    with _opened() as state:
        migrate.upgrade(state.engine)
        click.echo(f"database at revision {migrate.current(state.engine)}")


# --------------------------------------------------------------------------- diagrams
def _read_bundle(paths: tuple[Path, ...]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for path in paths:
        candidates = sorted(path.glob("*")) if path.is_dir() else [path]
        files.update({p.name: p.read_bytes() for p in candidates if p.is_file() and p.suffix in (".bpmn", ".dmn")})
    return files


def _echo_problems(problems: list[Any], err: bool = False) -> None:
    """One line per problem, `file:line [element] message`, for `validate` and `deploy` alike."""
    from workflows import Problem
    from workflows.validation import describe

    for problem in problems:
        if isinstance(problem, dict):
            problem = Problem(**problem)
        click.echo(describe(problem), err=err)


def _domain_problems(exc: Any) -> list[Any]:
    from workflows import Problem

    return exc.extra.get("problems") or [Problem(exc.detail, file=exc.extra.get("file"))]


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
def deploy(paths: tuple[Path, ...]) -> None:
    """Validate and deploy .bpmn/.dmn files (default: the bundled bpmn/ and dmn/) as a new version if changed."""
    from .errors import DomainError
    from .services.deployments import deploy_files
    from .uow import UnitOfWork

    try:
        with _opened() as state, UnitOfWork(state.session_factory) as uow:
            files = _read_bundle(paths or tuple(state.settings.bpmn_dirs))
            view, created = deploy_files(uow, state.deployments, None, files)
    except DomainError as exc:
        _echo_problems(_domain_problems(exc), err=True)
        sys.exit(1)
    click.echo(f"deployment v{view.version} {view.hash} ({'new' if created else 'unchanged'})")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--against-db", is_flag=True,
              help="also check groups and the latest deployed version in the database (DATABASE_URL)")
def validate(paths: tuple[Path, ...], against_db: bool) -> None:
    """Check .bpmn/.dmn files (or directories of them) and print every problem; stores nothing.

    Exit status 1 when there is a problem, one line each: file:line [element] message.
    """
    from workflows.validation import validate_bundle

    from .errors import DomainError
    from .services.deployments import validate_files
    from .uow import UnitOfWork

    files = _read_bundle(paths)
    if against_db:
        try:
            with _opened() as state, UnitOfWork(state.session_factory) as uow:
                problems: list[Any] = validate_files(uow, state.deployments, None, files).problems
        except DomainError as exc:
            problems = _domain_problems(exc)
    else:
        problems = validate_bundle(files)
    _echo_problems(problems)
    if problems:
        sys.exit(1)
    click.echo(f"{len(files)} file(s), no problems", err=True)


@main.command()
@click.argument("instance_ids", nargs=-1, required=True, type=int)
@click.option("--to", "to_version", required=True, type=int, help="the deployment version to move to")
@click.option("--dry-run", is_flag=True, help="report what would change; change nothing")
def migrate(instance_ids: tuple[int, ...], to_version: int, dry_run: bool) -> None:
    """Move workflow instances to another deployment version (all or none); audited."""
    from .errors import DomainError
    from .services.deployments import migrate_instances
    from .uow import UnitOfWork

    try:
        with _opened() as state, UnitOfWork(state.session_factory) as uow:
            results = [r.as_dict() for r in
                       migrate_instances(uow, state.deployments, None, list(instance_ids), to_version, dry_run=dry_run)]
    except DomainError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        results = exc.extra.get("instances") or []
        _echo_migration(results, err=True)
        sys.exit(1)
    _echo_migration(results)
    if any(not r["possible"] for r in results):
        sys.exit(1)


def _echo_migration(results: list[dict[str, Any]], err: bool = False) -> None:
    for r in results:
        verdict = "possible" if r["possible"] else "impossible"
        click.echo(f"instance {r['instance_id']}: v{r['from_version']} -> v{r['to_version']} {verdict}", err=err)
        for reason in r["reasons"]:
            click.echo(f"  refused: {reason}", err=err)
        elements = r.get("elements") or {}
        for change in ("added", "removed", "changed"):
            if elements.get(change):
                click.echo(f"  {change}: {', '.join(sorted(elements[change]))}", err=err)
        for task in r.get("tasks") or []:
            fields = f" ({', '.join(task['fields'])})" if task["fields"] else ""
            click.echo(f"  task {task['bpmn_id']} [{task['state']}] {task['impact']}{fields}", err=err)


@main.command("test-diagrams")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--base", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="resolve each scenario's deployment paths here (default: the current directory, "
                   "then the scenario's folders upwards)")
def test_diagrams(paths: tuple[Path, ...], base: Path | None) -> None:
    """Run scenario files (*.json; default: tests/workflows/scenarios) against the diagrams, in memory.

    One PASS/FAIL line per scenario, with the first mismatch; exit status 1 when one fails.
    """
    from workflows.scenarios import run_all

    targets = paths or (Path("tests/workflows/scenarios"),)
    if not paths and not targets[0].is_dir():
        click.echo("error: no scenario paths given and no tests/workflows/scenarios here", err=True)
        sys.exit(1)
    results = list(run_all(targets, base=base))
    for result in results:
        click.echo(result.line())
    failed = sum(not r.passed for r in results)
    click.echo(f"{len(results) - failed} passed, {failed} failed", err=True)
    if failed or not results:
        sys.exit(1)


# --------------------------------------------------------------------------- users
@main.group()
def users() -> None:
    """Users and their tokens."""


@users.command("create")
@click.argument("name")
@click.option("--group", "groups", multiple=True, help="approval group (repeatable); created if missing")
@click.option("--admin", is_flag=True)
def users_create(name: str, groups: tuple[str, ...], admin: bool) -> None:
    """Create a user and print a bearer token for it (shown once)."""
    from .errors import DomainError
    from .services import identity
    from .uow import UnitOfWork

    try:
        with _opened() as state, UnitOfWork(state.session_factory) as uow:
            user = identity.create_user(uow, name, list(groups), is_admin=admin)
            token = identity.issue_token(uow, user)
            uow.commit()
    except DomainError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(1)
    click.echo(token)


@users.command("token")
@click.argument("name")
def users_token(name: str) -> None:
    """Issue a new bearer token for an existing user."""
    from .errors import DomainError
    from .services import identity
    from .uow import UnitOfWork

    try:
        with _opened() as state, UnitOfWork(state.session_factory) as uow:
            token = identity.issue_token(uow, identity.get_user(uow, name))
            uow.commit()
    except DomainError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(1)
    click.echo(token)


# --------------------------------------------------------------------------- groups
@main.group()
def groups() -> None:
    """Approval groups: list, create, rename, members, lead (the same rules as /api/v1/groups)."""


def _group_command(action: Any) -> None:
    """Run `action(uow)` in one transaction; a domain error prints `error: ...` and exits 1."""
    from .errors import DomainError
    from .uow import UnitOfWork

    try:
        with _opened() as state, UnitOfWork(state.session_factory) as uow:
            action(uow)
    except DomainError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(1)


def _echo_group(uow: Any, group_id: int) -> None:
    from .services import groups as service

    view = service.group_view(uow, group_id)
    lead = view.group.lead.username if view.group.lead is not None else "-"
    former = f"  (formerly {', '.join(view.aliases)})" if view.aliases else ""
    click.echo(f"{view.group.name}  lead={lead}  members={','.join(u.username for u in view.members) or '-'}{former}")


@groups.command("list")
def groups_list() -> None:
    """One line per group: name, lead, members."""
    from .services import groups as service

    def run(uow: Any) -> None:
        for group in service.list_groups(uow, page=1, page_size=10_000).items:
            _echo_group(uow, group.id)

    _group_command(run)


@groups.command("create")
@click.argument("name")
@click.option("--member", "members", multiple=True, help="username (repeatable)")
@click.option("--lead", default=None, help="a member's username")
@click.option("--description", default="")
def groups_create(name: str, members: tuple[str, ...], lead: str | None, description: str) -> None:
    """Create a group."""
    from .services import groups as service

    _group_command(lambda uow: _echo_group(uow, service.create_group(
        uow, name, description=description, lead=lead, members=list(members)).id))


@groups.command("rename")
@click.argument("name")
@click.argument("new_name")
def groups_rename(name: str, new_name: str) -> None:
    """Rename a group; the old name keeps routing to it (deployed tables, open tasks)."""
    from .services import groups as service

    def run(uow: Any) -> None:
        group = service.group_by_name(uow, name)
        service.update_group(uow, group.id, name=new_name)
        _echo_group(uow, group.id)

    _group_command(run)


@groups.command("add-member")
@click.argument("name")
@click.argument("usernames", nargs=-1, required=True)
def groups_add_member(name: str, usernames: tuple[str, ...]) -> None:
    """Add members: they gain the group's open approval seats at once."""
    from .services import groups as service

    def run(uow: Any) -> None:
        group = service.group_by_name(uow, name)
        for username in usernames:
            service.add_member(uow, group.id, username)
        _echo_group(uow, group.id)

    _group_command(run)


@groups.command("remove-member")
@click.argument("name")
@click.argument("usernames", nargs=-1, required=True)
def groups_remove_member(name: str, usernames: tuple[str, ...]) -> None:
    """Remove members: they lose the group's open approval seats at once."""
    from .services import groups as service

    def run(uow: Any) -> None:
        group = service.group_by_name(uow, name)
        for username in usernames:
            service.remove_member(uow, group.id, username)
        _echo_group(uow, group.id)

    _group_command(run)


@groups.command("set-lead")
@click.argument("name")
@click.argument("username", required=False)
def groups_set_lead(name: str, username: str | None) -> None:
    """Set the group's lead (a member), or clear it when no username is given."""
    from .services import groups as service

    def run(uow: Any) -> None:
        group = service.group_by_name(uow, name)
        service.update_group(uow, group.id, lead=username, clear_lead=username is None)
        _echo_group(uow, group.id)

    _group_command(run)


# --------------------------------------------------------------------------- demo
@main.command()
def demo() -> None:
    """Load the demo (accounts, contracts, milestones, groups, users) and print fresh tokens."""
    with _opened() as state:
        prepare_database(state)
        _load_demo(state)


def _load_demo(state: Any) -> None:
    from .services.demo import load_demo
    from .uow import UnitOfWork

    with UnitOfWork(state.session_factory) as uow:
        tokens = load_demo(uow, state.deployments)
    env_file = state.settings.instance_dir / "demo-tokens.env"
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text("".join(f"{name.upper()}_TOKEN={token}\n" for name, token in tokens.items()))
    env_file.chmod(0o600)
    click.echo("demo users (tokens also in " + str(env_file) + "):", err=True)
    for name, token in tokens.items():
        click.echo(f"  {name:8} {token}", err=True)


if __name__ == "__main__":
    main()
