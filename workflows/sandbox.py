"""Contained scripts and expressions: the only way diagram code is compiled and run.

Every script, condition, timer, multi-instance and DMN expression and every `${…}` attribute
goes through here. Three layers:

1. **Policy (static).** An AST allow-list: no import, no `global`/`nonlocal`, no class, `with`,
   `yield`, `async` or `match`; no name starting with `__`, no attribute starting with `_` nor
   the frame/generator attributes (`gi_frame`, `f_back`, …) that lead back to real builtins; no
   default arguments, decorators or annotations; no bare `except`. Constant sub-expressions are
   folded with the runtime guards, so `10 ** 10 ** 10` or `"x" * 10 ** 9` are refused at
   deployment, and so is a `while True:` without `break`. `check()` returns every problem with
   its line; `compile_checked()` caches compiled code by source text.
2. **Guards (runtime, in the compiled code).** `*`, `**`, `<<`, `+`, `%` and their in-place
   forms, `range`, `pow`, `int`, `sum` and the growing string/list methods (`ljust`, `join`,
   `replace`, `format`, `extend`, …) refuse results larger than `MAX_ITEMS` elements/characters
   or `MAX_INT_BITS` bits. Only the builtins in `SAFE_BUILTINS` exist.
3. **Isolation by shape.** Code without loops, comprehensions, `lambda` or `def` does a bounded
   amount of work (each guarded step is bounded and there are as many steps as there is source)
   and runs in-process: this is every gateway condition, DMN cell and parameter of the bundled
   diagrams. Code with loops or functions runs in a pre-started sandbox process (one per
   concurrent caller, reused) under `RLIMIT_AS` and a wall-clock limit; on a limit the process
   is killed and replaced and `LimitExceeded` is raised.

This module imports only the standard library: the sandbox process runs this very file.
"""

from __future__ import annotations

import ast
import atexit
import builtins
import functools
import io
import operator
import os
import pickle
import re
import select
import string
import struct
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as dtime
from decimal import Decimal
from types import CodeType
from typing import Any

SCRIPT_FILENAME = "<script>"
MAX_ITEMS = 1_000_000  # elements of a sequence or characters of a string, per value
MAX_INT_BITS = 100_000  # about 30,000 decimal digits
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


# --------------------------------------------------------------------------- errors
class SandboxError(Exception):
    """Base of the errors this module raises about diagram code itself."""


class UnsafeCode(SandboxError):
    """The code uses something the policy refuses; `line` counts inside the code."""

    def __init__(self, message: str, line: int | None = None):
        self.message = message
        self.line = line
        super().__init__(f"{message} (line {line})" if line else message)


class LimitExceeded(SandboxError):
    """A time, memory or size limit stopped the code. `kind` is "time", "memory" or "size"."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


class ScriptFailed(SandboxError):
    """The code raised an exception of a type that is not re-created by name in this process."""


class SandboxUnavailable(SandboxError):
    """The sandbox process could not be started or answered nonsense."""


# --------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    time_seconds: float = 2.0
    memory_bytes: int = 256 * 1024 * 1024


_limits = Limits()


def configure(*, time_seconds: float | None = None, memory_bytes: int | None = None) -> Limits:
    """Set the process-wide limits for isolated code; returns the previous ones."""
    global _limits
    previous = _limits
    _limits = Limits(
        time_seconds=previous.time_seconds if time_seconds is None else float(time_seconds),
        memory_bytes=previous.memory_bytes if memory_bytes is None else int(memory_bytes),
    )
    if _limits.memory_bytes != previous.memory_bytes:
        _POOL.discard_idle()  # the memory limit is fixed when a sandbox process starts
    return previous


def limits() -> Limits:
    return _limits


# --------------------------------------------------------------------------- policy
# Frames, code and generator internals lead back to real globals and builtins.
BLOCKED_ATTRIBUTES = frozenset(
    """
    gi_frame gi_code gi_yieldfrom gi_running gi_suspended cr_frame cr_code cr_await cr_origin ag_frame
    ag_code ag_await f_back f_builtins f_code f_globals f_locals f_trace f_lineno tb_frame tb_next tb_lasti
    co_code co_consts co_names func_globals func_code func_closure im_func im_self im_class mro
    with_traceback
    """.split()
)
ALLOWED_EXCEPTIONS = frozenset(
    """
    Exception ArithmeticError AttributeError IndexError KeyError LookupError NameError OverflowError
    TypeError ValueError ZeroDivisionError
    """.split()
)
# Code with these runs in the sandbox process: it can loop (or recurse) without bound.
_UNBOUNDED_NODES = (
    ast.For,
    ast.While,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.Lambda,
    ast.FunctionDef,
)
_REFUSED_NODES: dict[type, str] = {
    ast.Import: "import is not allowed",
    ast.ImportFrom: "import is not allowed",
    ast.Global: "global is not allowed",
    ast.Nonlocal: "nonlocal is not allowed",
    ast.ClassDef: "class definitions are not allowed",
    ast.AsyncFunctionDef: "async code is not allowed",
    ast.AsyncFor: "async code is not allowed",
    ast.AsyncWith: "async code is not allowed",
    ast.Await: "async code is not allowed",
    ast.With: "with is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.AnnAssign: "annotations are not allowed",
    ast.Match: "match is not allowed",
}
if hasattr(ast, "TryStar"):
    _REFUSED_NODES[ast.TryStar] = "except* is not allowed"
_ALLOWED_NODES = tuple(
    getattr(ast, name)
    for name in """
    Module Expression Expr Assign AugAssign If For While Break Continue Pass Delete Assert Raise Try
    ExceptHandler FunctionDef Return Lambda arguments arg BoolOp NamedExpr BinOp UnaryOp IfExp Dict Set
    ListComp SetComp DictComp GeneratorExp comprehension Compare Call keyword FormattedValue JoinedStr
    Constant Attribute Subscript Starred Name List Tuple Slice expr_context operator boolop unaryop cmpop
    """.split()
)
_FORMAT_WIDTH = re.compile(r"(\d+)")


class _Policy(ast.NodeVisitor):
    def __init__(self) -> None:
        self.problems: list[tuple[str, int | None]] = []
        self.unbounded = False

    def refuse(self, node: ast.AST, message: str) -> None:
        self.problems.append((message, getattr(node, "lineno", None)))

    def generic_visit(self, node: ast.AST) -> None:
        refused = _REFUSED_NODES.get(type(node))
        if refused:
            self.refuse(node, refused)
            return
        if not isinstance(node, _ALLOWED_NODES):
            self.refuse(node, f"{type(node).__name__} is not allowed")
            return
        if isinstance(node, _UNBOUNDED_NODES):
            self.unbounded = True
        super().generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id.startswith("__"):
            self.refuse(node, f"the name {node.id!r} is not allowed (double underscore)")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        before = len(self.problems)
        self.generic_visit(node)
        # one problem per chain, at its first bad link: `().__class__.__base__` names __class__
        if (node.attr.startswith("_") or node.attr in BLOCKED_ATTRIBUTES) and len(self.problems) == before:
            self.refuse(node, f"the attribute .{node.attr} is not allowed")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.decorator_list:
            self.refuse(node, "decorators are not allowed")
        if node.returns is not None:
            self.refuse(node, "annotations are not allowed")
        if node.name.startswith("__"):
            self.refuse(node, f"the name {node.name!r} is not allowed (double underscore)")
        self.generic_visit(node)

    def visit_arguments(self, node: ast.arguments) -> None:
        if node.defaults or any(d is not None for d in node.kw_defaults):
            self.refuse(
                node.defaults[0] if node.defaults else node, "default argument values are not allowed"
            )
        for arg in [*node.posonlyargs, *node.args, *node.kwonlyargs, node.vararg, node.kwarg]:
            if arg is None:
                continue
            if arg.arg.startswith("__"):
                self.refuse(arg, f"the name {arg.arg!r} is not allowed (double underscore)")
            if arg.annotation is not None:
                self.refuse(arg, "annotations are not allowed")

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        if node.type is None:
            self.refuse(node, "a bare except is not allowed: name the exceptions")
        elif not all(isinstance(t, ast.Name) and t.id in ALLOWED_EXCEPTIONS for t in types):
            self.refuse(node, f"except may only name {', '.join(sorted(ALLOWED_EXCEPTIONS))}")
        if node.name and node.name.startswith("__"):
            self.refuse(node, f"the name {node.name!r} is not allowed (double underscore)")
        for stmt in node.body:
            self.visit(stmt)

    def visit_While(self, node: ast.While) -> None:
        test = node.test
        if isinstance(test, ast.Constant) and test.value and not _breaks(node.body):
            self.refuse(node, "this loop never ends (while true without break)")
        self.generic_visit(node)

    def visit_FormattedValue(self, node: ast.FormattedValue) -> None:
        spec = node.format_spec
        if spec is not None:
            parts = spec.values if isinstance(spec, ast.JoinedStr) else [spec]
            if not all(isinstance(p, ast.Constant) for p in parts):
                self.refuse(node, "a computed format spec is not allowed")
            else:
                text = "".join(str(p.value) for p in parts)  # type: ignore[attr-defined]
                if any(int(w) > MAX_ITEMS for w in _FORMAT_WIDTH.findall(text)):
                    self.refuse(node, f"format width larger than {MAX_ITEMS}")
        self.visit(node.value)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self.generic_visit(node)
        try:
            _fold(node)
        except LimitExceeded as exc:
            self.refuse(node, str(exc))
        except Exception:  # noqa: BLE001 - folding is best effort; the guards run again at run time
            pass


def _breaks(body: list[ast.stmt]) -> bool:
    """Whether a `break` (or `return`/`raise`) leaves this loop body; nested loops' breaks don't count."""
    for stmt in body:
        for node in _walk_outside_nested_loops(stmt):
            if isinstance(node, (ast.Break, ast.Return, ast.Raise)):
                return True
    return False


def _walk_outside_nested_loops(node: ast.AST) -> list[ast.AST]:
    found = [node]
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.For, ast.While)):
            found.extend(n for n in ast.walk(child) if isinstance(n, (ast.Return, ast.Raise)))
            continue
        if isinstance(child, (ast.FunctionDef, ast.Lambda)):
            continue
        found.extend(_walk_outside_nested_loops(child))
    return found


def _fold(node: ast.AST) -> Any:
    """Evaluate a constant arithmetic sub-expression with the runtime guards, or raise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bytes, Decimal)):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_fold(e) for e in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_fold(node.operand)
    if isinstance(node, ast.BinOp):
        guard = _FOLD_OPS.get(type(node.op))
        if guard is not None:
            return guard(_fold(node.left), _fold(node.right))
    raise ValueError("not constant")


def check(source: str, mode: str = "eval") -> list[tuple[str, int | None]]:
    """Every policy problem and syntax error of `source`, as (message, line inside the source)."""
    try:
        tree = ast.parse(_normalize(source, mode), filename=SCRIPT_FILENAME, mode=mode)
    except SyntaxError as exc:
        return [(f"does not compile: {exc.msg}", exc.lineno)]
    policy = _Policy()
    policy.visit(tree)
    return policy.problems


@dataclass(frozen=True)
class Compiled:
    source: str
    mode: str
    code: CodeType
    isolated: bool  # loops or functions: run in the sandbox process


@functools.lru_cache(maxsize=4096)
def compile_checked(source: str, mode: str = "eval") -> Compiled:
    """Check and compile `source` once. Raises SyntaxError or UnsafeCode (the first problem)."""
    tree = ast.parse(_normalize(source, mode), filename=SCRIPT_FILENAME, mode=mode)
    policy = _Policy()
    policy.visit(tree)
    if policy.problems:
        message, line = policy.problems[0]
        raise UnsafeCode(message, line)
    tree = ast.fix_missing_locations(_Guard().visit(tree))
    return Compiled(source, mode, compile(tree, SCRIPT_FILENAME, mode), policy.unbounded)


def _normalize(source: str, mode: str) -> str:
    return source.strip() if mode == "eval" else textwrap.dedent(source).rstrip()


# --------------------------------------------------------------------------- guards
class _Guard(ast.NodeTransformer):
    """Rewrites the operators and methods that can build huge values into guarded calls."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        name = _BINOP_GUARDS.get(type(node.op))
        if name is None:
            return node
        call = ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=[node.left, node.right], keywords=[])
        return ast.copy_location(call, node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        name = _INPLACE_GUARDS.get(type(node.op))
        if name is None:
            return node
        load = _as_load(node.target)
        call = ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=[load, node.value], keywords=[])
        return ast.copy_location(ast.Assign(targets=[node.target], value=call), node)

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        self.generic_visit(node)
        call = ast.Call(func=ast.Name(id="__sb_fmtarg__", ctx=ast.Load()), args=[node.value], keywords=[])
        node.value = ast.copy_location(call, node.value)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if node.attr not in _GUARDED_METHODS or not isinstance(node.ctx, ast.Load):
            return node
        call = ast.Call(
            func=ast.Name(id="__sb_attr__", ctx=ast.Load()),
            args=[node.value, ast.Constant(node.attr)],
            keywords=[],
        )
        return ast.copy_location(call, node)


def _as_load(target: ast.expr) -> ast.expr:
    if isinstance(target, ast.Name):
        return ast.Name(id=target.id, ctx=ast.Load())
    if isinstance(target, ast.Subscript):
        return ast.Subscript(value=target.value, slice=target.slice, ctx=ast.Load())
    if isinstance(target, ast.Attribute):
        return ast.Attribute(value=target.value, attr=target.attr, ctx=ast.Load())
    raise UnsafeCode("unsupported augmented assignment target", getattr(target, "lineno", None))


def _too_big(what: str) -> LimitExceeded:
    return LimitExceeded(
        "size", f"{what} would exceed the size limit ({MAX_ITEMS} items, {MAX_INT_BITS} bits)"
    )


_SEQUENCES = (str, bytes, bytearray, list, tuple)


def _check_len(n: int, what: str) -> None:
    if n > MAX_ITEMS:
        raise _too_big(what)


def _check_bits(n: int, what: str) -> None:
    if n > MAX_INT_BITS:
        raise _too_big(what)


def _mul_check(a: Any, b: Any) -> None:
    if isinstance(a, _SEQUENCES) and isinstance(b, int):
        _check_len(len(a) * max(b, 0), "repetition")
    elif isinstance(b, _SEQUENCES) and isinstance(a, int):
        _check_len(len(b) * max(a, 0), "repetition")
    elif isinstance(a, int) and isinstance(b, int):
        _check_bits(abs(a).bit_length() + abs(b).bit_length(), "multiplication")


def _pow_check(a: Any, b: Any) -> None:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        _check_bits(abs(a).bit_length() * b, "power")
    elif isinstance(a, Decimal) and isinstance(b, (int, Decimal)) and abs(b) > MAX_INT_BITS:
        raise _too_big("power")


def _lshift_check(a: Any, b: Any) -> None:
    if isinstance(a, int) and isinstance(b, int) and a:
        _check_bits(abs(a).bit_length() + max(b, 0), "shift")


def _add_check(a: Any, b: Any) -> None:
    if isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES):
        _check_len(len(a) + len(b), "concatenation")


_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _mod_check(a: Any, b: Any) -> None:
    if isinstance(a, (str, bytes)):
        text = a.decode("latin-1") if isinstance(a, bytes) else a
        for width, precision in _PERCENT_FIELD.findall(text):
            for value in (width, precision):
                if value == "*":
                    raise LimitExceeded("size", "a '*' width in %-formatting is not allowed")
                if value and int(value) > MAX_ITEMS:
                    raise _too_big("%-format width")
        _check_decimals(b)


def _guarded(check: Any, op: Any) -> Any:
    def guard(a: Any, b: Any) -> Any:
        check(a, b)
        return op(a, b)

    return guard


_BINOP_GUARDS = {
    ast.Mult: "__sb_mul__",
    ast.Pow: "__sb_pow__",
    ast.LShift: "__sb_lshift__",
    ast.Add: "__sb_add__",
    ast.Mod: "__sb_mod__",
}
_INPLACE_GUARDS = {
    ast.Mult: "__sb_imul__",
    ast.Pow: "__sb_ipow__",
    ast.LShift: "__sb_ilshift__",
    ast.Add: "__sb_iadd__",
    ast.Mod: "__sb_imod__",
}
_GUARD_FUNCTIONS = {
    "__sb_mul__": _guarded(_mul_check, operator.mul),
    "__sb_pow__": _guarded(_pow_check, operator.pow),
    "__sb_lshift__": _guarded(_lshift_check, operator.lshift),
    "__sb_add__": _guarded(_add_check, operator.add),
    "__sb_mod__": _guarded(_mod_check, operator.mod),
    "__sb_imul__": _guarded(_mul_check, operator.imul),
    "__sb_ipow__": _guarded(_pow_check, operator.ipow),
    "__sb_ilshift__": _guarded(_lshift_check, operator.ilshift),
    "__sb_iadd__": _guarded(_add_check, operator.iadd),
    "__sb_imod__": _guarded(_mod_check, operator.imod),
}
_FOLD_OPS = {
    getattr(ast, cls): _GUARD_FUNCTIONS[name]
    for cls, name in (
        ("Mult", "__sb_mul__"),
        ("Pow", "__sb_pow__"),
        ("LShift", "__sb_lshift__"),
        ("Add", "__sb_add__"),
        ("Mod", "__sb_mod__"),
    )
}
_FOLD_OPS[ast.Sub] = operator.sub


def _width_method(method: Any, name: str) -> Any:
    def call(width: Any, *args: Any) -> Any:
        if isinstance(width, int):
            _check_len(width, f".{name}() width")
        return method(width, *args)

    return call


def _replace_method(obj: Any, method: Any) -> Any:
    def replace(old: Any, new: Any, count: int = -1) -> Any:
        if len(new) > len(old):
            hits = (len(obj) + 1) if not old else obj.count(old)
            if count >= 0:
                hits = min(hits, count)
            _check_len(len(obj) + hits * (len(new) - len(old)), ".replace() result")
        return method(old, new, count)

    return replace


def _join_method(obj: Any, method: Any) -> Any:
    def join(items: Any) -> Any:
        items = list(items)
        _check_len(len(items), ".join() input")
        total = len(obj) * max(len(items) - 1, 0) + sum(
            len(i) if isinstance(i, _SEQUENCES) else 0 for i in items
        )
        _check_len(total, ".join() result")
        return method(items)

    return join


def _expandtabs_method(obj: Any, method: Any) -> Any:
    def expandtabs(tabsize: int = 8) -> Any:
        _check_len(len(obj) * max(tabsize, 1), ".expandtabs() result")
        return method(tabsize)

    return expandtabs


def _checked_format_string(text: str) -> None:
    for _literal, field, spec, _conversion in string.Formatter().parse(text):
        if field and ("." in field or "[" in field):
            raise UnsafeCode("attribute or index access inside a format string is not allowed")
        if spec:
            if "{" in spec:
                raise UnsafeCode("a computed format spec is not allowed")
            if any(int(w) > MAX_ITEMS for w in _FORMAT_WIDTH.findall(spec)):
                raise _too_big("format width")


def _format_method(obj: Any, method: Any) -> Any:
    def fmt(*args: Any, **kwargs: Any) -> Any:
        _checked_format_string(obj)
        _check_decimals(*args, *kwargs.values())
        return method(*args, **kwargs)

    return fmt


def _extend_method(obj: Any, method: Any) -> Any:
    def extend(items: Any) -> Any:
        items = list(items)
        _check_len(len(obj) + len(items), ".extend() result")
        return method(items)

    return extend


_GUARDED_METHODS = frozenset(
    {"ljust", "rjust", "center", "zfill", "replace", "join", "expandtabs", "format", "format_map", "extend"}
)


def _attr(obj: Any, name: str) -> Any:
    if isinstance(obj, type):  # str.format(fmt, ...) would skip the checks below
        raise UnsafeCode(f"call .{name}() on a value, not on a type")
    method = getattr(obj, name)
    if isinstance(obj, (str, bytes, bytearray)):
        if name in ("ljust", "rjust", "center", "zfill"):
            return _width_method(method, name)
        if name == "replace":
            return _replace_method(obj, method)
        if name == "join":
            return _join_method(obj, method)
        if name == "expandtabs":
            return _expandtabs_method(obj, method)
        if name in ("format", "format_map") and isinstance(obj, str):
            return _format_method(obj, method)
    if name == "extend" and isinstance(obj, (list, bytearray)):
        return _extend_method(obj, method)
    return method


# --------------------------------------------------------------------------- builtins
def _safe_range(*args: Any) -> range:
    r = range(*args)
    try:
        n = len(r)
    except OverflowError:
        raise _too_big("range") from None
    _check_len(n, "range")
    return r


def _safe_pow(base: Any, exp: Any, mod: Any = None) -> Any:
    if mod is not None:
        return pow(base, exp, mod)
    _pow_check(base, exp)
    return pow(base, exp)


MAX_DECIMAL_DIGITS = 4300  # as sys.int_max_str_digits: Decimal("1e999999999") is a short literal


def _check_decimals(*values: Any) -> None:
    """A huge Decimal is cheap to write but expands when converted to int or formatted with "f"."""
    for value in values:
        if isinstance(value, Decimal) and value.is_finite() and abs(value.adjusted()) > MAX_DECIMAL_DIGITS:
            raise LimitExceeded(
                "size", f"a decimal with more than {MAX_DECIMAL_DIGITS} digits cannot be converted"
            )
        if isinstance(value, (tuple, list)):
            _check_decimals(*value)
        elif isinstance(value, dict):
            _check_decimals(*value.values())


def _safe_int(*args: Any) -> int:
    _check_decimals(*args[:1])
    return int(*args)


def _safe_round(number: Any, ndigits: Any = None) -> Any:
    _check_decimals(number)
    return round(number) if ndigits is None else round(number, ndigits)


def _format_arg(value: Any) -> Any:
    _check_decimals(value)
    return value


def _safe_sum(items: Any, start: Any = 0) -> Any:
    if isinstance(start, _SEQUENCES):
        total = start
        for item in items:
            _add_check(total, item)
            total = total + item
        return total
    return sum(items, start)


def _today() -> date:
    return datetime.now(UTC).date()


def _now() -> datetime:
    return datetime.now(UTC)


SAFE_BUILTINS: dict[str, Any] = {
    name: getattr(builtins, name)
    for name in """
    abs all any bool chr dict divmod enumerate filter float frozenset isinstance len list map max min ord
    repr reversed round set sorted str tuple zip True False None
    """.split()
    + sorted(ALLOWED_EXCEPTIONS)
}
SAFE_BUILTINS.update(
    {
        "range": _safe_range,
        "round": _safe_round,
        "__sb_fmtarg__": _format_arg,
        "pow": _safe_pow,
        "int": _safe_int,
        "sum": _safe_sum,
        "Decimal": Decimal,
        "date": date,
        "datetime": datetime,
        "time": dtime,
        "timedelta": timedelta,
        "timezone": timezone,
        "UTC": UTC,
        "today": _today,
        "now": _now,
        "__sb_attr__": _attr,
        **_GUARD_FUNCTIONS,
    }
)


def _globals(context: dict[str, Any], external_context: dict[str, Any] | None) -> dict[str, Any]:
    scope: dict[str, Any] = dict(external_context) if external_context else {}
    scope.update(context)
    # after the data: a data key named __builtins__ must never replace the allow-list
    scope["__builtins__"] = SAFE_BUILTINS
    return scope


def _written_back(
    scope: dict[str, Any], context: dict[str, Any], external_context: dict[str, Any] | None
) -> dict:
    """What a script leaves in the task data: as SpiffWorkflow does, no functions, no helpers."""
    return {
        k: v
        for k, v in scope.items()
        if k != "__builtins__"
        and not callable(v)
        and not (external_context and k in external_context and k not in context)
    }


# --------------------------------------------------------------------------- running
def evaluate(source: str, context: dict[str, Any], external_context: dict[str, Any] | None = None) -> Any:
    """Value of the expression `source` against `context` (task data) plus `external_context`.

    Raises SyntaxError, UnsafeCode, LimitExceeded, SandboxUnavailable, or what the expression raised.
    """
    compiled = compile_checked(source, "eval")
    if compiled.isolated:
        return _POOL.run("eval", source, context, external_context)
    return eval(compiled.code, _globals(context, external_context))  # noqa: S307 - checked, guarded code


def execute(source: str, context: dict[str, Any], external_context: dict[str, Any] | None = None) -> None:
    """Run the script `source`; its variables replace `context` in place. Same errors as `evaluate`."""
    compiled = compile_checked(source, "exec")
    if compiled.isolated:
        result = _POOL.run("exec", source, context, external_context)
    else:
        scope = _globals(context, external_context)
        exec(compiled.code, scope)  # noqa: S102 - checked, guarded code
        result = _written_back(scope, context, external_context)
    context.clear()
    context.update(result)


def script_line(err: BaseException) -> int | None:
    """The line inside the script where `err` was raised, when known."""
    line = getattr(err, "script_line", None)
    if isinstance(line, int):
        return line
    if isinstance(err, UnsafeCode):
        return err.line
    tb = err.__traceback__
    found = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == SCRIPT_FILENAME:
            found = tb.tb_lineno
        tb = tb.tb_next
    return found


# --------------------------------------------------------------------------- the sandbox process
_ALLOWED_RESULT_GLOBALS = {
    ("decimal", "Decimal"),
    ("datetime", "datetime"),
    ("datetime", "date"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("uuid", "UUID"),
}


class _ResultUnpickler(pickle.Unpickler):
    """The sandbox process runs diagram code: what it sends back is plain data or refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_RESULT_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a script result of type {module}.{name} is not plain data")


_REBUILT_EXCEPTIONS = {
    name: getattr(builtins, name)
    for name in [*ALLOWED_EXCEPTIONS, *"RecursionError RuntimeError AssertionError StopIteration".split()]
}


def _rebuild_error(type_name: str, message: str, line: int | None) -> BaseException:
    cls = _REBUILT_EXCEPTIONS.get(type_name)
    err: BaseException = cls(message) if cls is not None else ScriptFailed(f"{type_name}: {message}")
    err.script_line = line  # type: ignore[attr-defined]
    return err


class _Child:
    """One sandbox process: requests and answers are length-prefixed pickles over its stdin/stdout."""

    def __init__(self, memory_bytes: int):
        self.memory_bytes = memory_bytes
        self.owner_pid = os.getpid()
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and file
                [sys.executable, "-I", "-S", os.path.abspath(__file__), "--sandbox-child", str(memory_bytes)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxUnavailable(f"cannot start the script sandbox process: {exc}") from exc
        self.rfd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        self.wfd = self.proc.stdin.fileno()  # type: ignore[union-attr]

    def call(self, request: bytes, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        _write_all(self.wfd, struct.pack(">I", len(request)) + request)
        header = self._read(4, deadline)
        (size,) = struct.unpack(">I", header)
        if size > MAX_MESSAGE_BYTES:
            raise LimitExceeded("size", "the script result is too large to bring back")
        return _ResultUnpickler(io.BytesIO(self._read(size, deadline))).load()

    def _read(self, n: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        while n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.rfd], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(self.rfd, min(n, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self.owner_pid != os.getpid():
            return  # a forked copy of the parent: the process is not ours to stop
        try:
            self.proc.kill()
        except OSError:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Pool:
    """Idle sandbox processes, reused; one per concurrent caller. Safe across threads and forks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Child] = []
        self._pid = os.getpid()

    def _acquire(self) -> _Child:
        memory = _limits.memory_bytes
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's processes are not ours
                _FORKED_LEFTOVERS.extend(self._idle)  # kept referenced: never closed or collected here
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                child = self._idle.pop()
                if child.memory_bytes == memory and child.proc.poll() is None:
                    return child
                child.close()
        return _Child(memory)

    def _release(self, child: _Child) -> None:
        with self._lock:
            if self._pid == os.getpid() and child.owner_pid == self._pid:
                self._idle.append(child)
                return
        child.close()

    def discard_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.close()

    def prestart(self, count: int = 1) -> None:
        children = [self._acquire() for _ in range(count)]
        for child in children:
            self._release(child)

    def run(
        self, op: str, source: str, context: dict[str, Any], external_context: dict[str, Any] | None
    ) -> Any:
        try:
            request = pickle.dumps((op, source, dict(context), dict(external_context or {})), protocol=5)
        except Exception as exc:
            raise SandboxUnavailable(f"task data cannot be handed to the script sandbox: {exc}") from exc
        time_limit = _limits.time_seconds
        child = self._acquire()
        try:
            reply = child.call(request, time_limit)
        except TimeoutError:
            child.close()
            raise LimitExceeded("time", f"time limit of {time_limit:g} s exceeded") from None
        except (EOFError, OSError, struct.error) as exc:
            child.close()
            code = child.proc.returncode
            raise LimitExceeded("memory", f"the script sandbox process died (exit {code})") from exc
        except pickle.UnpicklingError as exc:
            self._release(child)
            raise ScriptFailed(str(exc)) from None
        except BaseException:
            child.close()
            raise
        kind = reply[0]
        if kind == "limit" and reply[1] == "memory":
            child.close()  # after a MemoryError the process is not trusted to be healthy
        else:
            self._release(child)
        if kind == "ok":
            return reply[1]
        if kind == "error":
            raise _rebuild_error(reply[1], reply[2], reply[3])
        if kind == "limit":
            raise LimitExceeded(reply[1], reply[2])
        if kind == "unsafe":
            raise UnsafeCode(reply[1], reply[2])
        if kind == "syntax":
            raise SyntaxError(reply[1])
        raise SandboxUnavailable(f"the script sandbox answered {kind!r}")

    def close_all(self) -> None:
        self.discard_idle()


_FORKED_LEFTOVERS: list[_Child] = []
_POOL = _Pool()
atexit.register(_POOL.close_all)


def prestart(count: int = 1) -> None:
    """Start `count` sandbox processes now (e.g. at worker boot) instead of on first use."""
    _POOL.prestart(count)


def _memory_error_message(memory_bytes: int) -> str:
    return f"memory limit of {memory_bytes // (1024 * 1024)} MiB exceeded"


def _child_serve(memory_bytes: int) -> None:
    import resource

    # Our protocol owns fds 0 and 1; nothing else may write to them.
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    with open("/proc/self/statm", "rb") as f:
        base = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (base + memory_bytes, base + memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    reader = os.fdopen(rfd, "rb", buffering=0)
    while True:
        header = _read_exact(reader, 4)
        if header is None:
            return
        (size,) = struct.unpack(">I", header)
        body = _read_exact(reader, size)
        if body is None:
            return
        reply: tuple[Any, ...]
        fatal = False
        try:
            op, source, context, external = pickle.loads(body)  # noqa: S301 - from our parent
            compiled = compile_checked(source, "eval" if op == "eval" else "exec")
            scope = _globals(context, external)
            if op == "eval":
                value = eval(compiled.code, scope)  # noqa: S307
                reply = ("ok", value)
            else:
                exec(compiled.code, scope)  # noqa: S102
                reply = ("ok", _written_back(scope, context, external))
        except MemoryError:
            reply, fatal = ("limit", "memory", _memory_error_message(memory_bytes)), True
        except LimitExceeded as exc:
            reply = ("limit", exc.kind, str(exc))
        except UnsafeCode as exc:
            reply = ("unsafe", exc.message, exc.line)
        except SyntaxError as exc:
            reply = ("syntax", str(exc))
        except Exception as exc:  # noqa: BLE001 - the script's own error, reported to the parent
            reply = ("error", type(exc).__name__, str(exc), script_line(exc))
        try:
            data = pickle.dumps(reply, protocol=5)
        except MemoryError:
            data, fatal = pickle.dumps(("limit", "memory", _memory_error_message(memory_bytes))), True
        except Exception as exc:  # noqa: BLE001 - e.g. a generator as a result
            data = pickle.dumps(("error", "TypeError", f"the result is not plain data: {exc}", None))
        _write_all(wfd, struct.pack(">I", len(data)) + data)
        if fatal:
            return


def _read_exact(reader: Any, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = reader.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--sandbox-child":
    _child_serve(int(sys.argv[2]))
