"""Adapter over the CEL implementation: compile once at load, evaluate per request.

We use `common-expression-language` (module `cel`, a Rust extension) rather than `cel-python` (`celpy`):
on this machine it evaluates a typical `when` about 40x faster (see docs/policy.md for the numbers).
Converting Python values to CEL values is the dominant cost, so an activation only carries the variables
an expression actually references.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# The `cel` package imports its interactive REPL (`cel.cli`: prompt_toolkit, pygments, rich, half a second
# or more) whenever it is imported. keyturn never runs the REPL, so an empty module stands in for it
# during the import; `import cel.cli` afterwards still loads the real one.
_REPL = "cel.cli"
if "cel" not in sys.modules and _REPL not in sys.modules:
    sys.modules[_REPL] = ModuleType(_REPL)
    try:
        import cel
    finally:
        del sys.modules[_REPL]
import cel  # noqa: E402  (after the stand-in above)

#: The variables a `when` expression may use.
VARIABLES = frozenset(
    {"action", "resource", "params", "requester", "on_behalf_of", "on_behalf_of_verified", "context", "now"}
)

_ERROR_AT = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*)")
# Identifiers bound by macros (`list.exists(x, ...)`) are reported as variables by `Program.variables()`.
_MACRO_BINDER = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter|transformList|transformMap)\s*\(\s*(\w+)"
)


class CelCompileError(Exception):
    """`line`/`column` are 1-based positions inside the expression text."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


class CelEvalError(Exception):
    """The expression failed on this request (missing key, wrong type…): the caller fails closed."""


@dataclass(frozen=True)
class CelProgram:
    source: str
    program: Any  # cel.Program
    variables: frozenset[str]  # the policy variables the expression references

    def evaluate(self, activation: Mapping[str, Any] | Any) -> bool:
        """Run on a dict or a `cel.Context`; only a boolean result is a result."""
        try:
            result = self.program.execute(activation)
        except Exception as exc:  # the extension raises KeyError/TypeError/RuntimeError/ZeroDivisionError…
            raise CelEvalError(_eval_message(exc)) from None
        if not isinstance(result, bool):
            raise CelEvalError(f"`when` must give true or false, got {type(result).__name__} {result!r}")
        return result


def compile_expression(source: str) -> CelProgram:
    if not source.strip():
        raise CelCompileError("`when` is empty; remove it or give a CEL expression")
    try:
        program = cel.compile(source)
    except Exception as exc:
        raise _compile_error(str(exc)) from None
    binders = set(_MACRO_BINDER.findall(source))
    referenced = set(program.variables()) - binders
    unknown = sorted(referenced - VARIABLES)
    if unknown:
        name = unknown[0]
        line, column = _locate(source, name)
        raise CelCompileError(
            f"unknown variable {name!r} in `when`; the variables are {', '.join(sorted(VARIABLES))}",
            line,
            column,
        )
    return CelProgram(source, program, frozenset(referenced & VARIABLES))


def new_context(variables: dict[str, Any]) -> Any:
    """A reusable activation: converted to CEL once, then shared by several programs."""
    return cel.Context(variables=variables)


def _compile_error(text: str) -> CelCompileError:
    found = _ERROR_AT.search(text)
    if found is None:
        return CelCompileError(f"`when` is not valid CEL: {text.strip()}")
    detail = found.group(3).strip()
    return CelCompileError(f"`when` is not valid CEL: {detail}", int(found.group(1)), int(found.group(2)))


def _locate(source: str, name: str) -> tuple[int, int]:
    found = re.search(rf"(?<![\w.]){re.escape(name)}\b", source)
    if found is None:
        return 1, 1
    before = source[: found.start()]
    return before.count("\n") + 1, found.start() - (before.rfind("\n") + 1) + 1


def _eval_message(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no such key: {exc.args[0] if exc.args else exc}"
    # the extension's messages are a first sentence plus generic advice: keep the first sentence
    return str(exc).split(". ", 1)[0].strip() or exc.__class__.__name__
