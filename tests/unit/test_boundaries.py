"""Dependencies point inward (DESIGN §4, issue #9): the lifecycle, the model and the policy engine know no
transport and no storage; routers reach only the service; importing keyturn does not load the SDK."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "keyturn"


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def _top(modules: set[str], *prefixes: str) -> set[str]:
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)}


def test_the_core_loads_no_transport_storage_or_sdk() -> None:
    loaded = _loaded_after("import keyturn.workflow, keyturn.model, keyturn.policy, keyturn.views")
    forbidden = _top(
        loaded,
        "keyturn.server",
        "keyturn.store",
        "keyturn.sdk",
        "fastapi",
        "sqlalchemy",
        "httpx",
        "starlette",
    )
    assert forbidden == set(), forbidden


def test_import_keyturn_loads_the_sdk_only_on_use() -> None:
    assert _top(_loaded_after("import keyturn"), "keyturn.sdk", "httpx") == set()
    assert "keyturn.sdk" in _loaded_after("from keyturn import Gate")


def _python_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _store_imports(path: Path) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        problems += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.startswith("keyturn.store")]
    return problems


def _reaches_past_the_service(path: Path) -> list[str]:
    """`svc.store`, `self.svc.policy`, `wired.svc.keyring`...: the service's own parts, used around it."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute) or node.attr not in ("store", "policy", "keyring"):
            continue
        owner = node.value
        named = (
            owner.id
            if isinstance(owner, ast.Name)
            else owner.attr
            if isinstance(owner, ast.Attribute)
            else ""
        )
        if named == "svc":
            problems.append(f"{path.name}:{node.lineno} reaches svc.{node.attr}")
    return problems


def test_no_router_imports_the_store_or_reaches_past_the_service() -> None:
    # Routers only: `server/app.py` is the composition root that opens the store and hands it to the
    # service, and `server/errors.py` maps storage failures to HTTP statuses.
    routers = [p for p in _python_files(SRC / "server") if p.parent.name != "server"]
    assert routers, "no router found"
    problems = []
    for path in routers:
        problems += _store_imports(path) + _reaches_past_the_service(path)
    assert problems == [], problems


def test_chat_endpoints_reach_only_the_service() -> None:
    # The inbound Slack and Teams endpoints are transports like the routers: links, replay guard, the
    # request a click names and the review itself all go through `Keyturn`. The outbox side of `channels`
    # (dispatcher, planner, runtime) is storage machinery and may import the store, but no channel module
    # reaches into the service's parts.
    inbound = [SRC / "channels" / "slack_http.py", SRC / "channels" / "teams_http.py"]
    problems = []
    for path in inbound:
        problems += _store_imports(path)
    for path in _python_files(SRC / "channels"):
        problems += _reaches_past_the_service(path)
    assert problems == [], problems


def test_no_router_takes_a_store_name_through_a_re_export() -> None:
    # `from keyturn.identity.sessions import SqlConsoleRepository` imports no `keyturn.store` module by name,
    # yet hands a router the store: every name a router imports must be defined outside the store.
    import importlib

    routers = [p for p in _python_files(SRC / "server") if p.parent.name != "server"]
    problems = []
    for path in routers:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("keyturn"):
                continue
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                found = getattr(module, alias.name, None)
                home = getattr(found, "__module__", None) or getattr(found, "__name__", "")
                if home.startswith("keyturn.store"):
                    problems.append(f"{path.name}:{node.lineno} takes {alias.name} from {home}")
    assert problems == [], problems


def test_the_console_reaches_accounts_through_the_service() -> None:
    # The console used to hold the store's repository (`con.repository.passkeys(...)`): every account
    # operation now goes through `svc.accounts`, the service's facade, which writes the ledger too.
    problems = []
    for path in _python_files(SRC / "server" / "console"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("repository", "_console", "_chat"):
                problems.append(f"{path.name}:{node.lineno} reaches .{node.attr}")
    assert problems == [], problems


def test_the_pure_modules_import_no_io_layer() -> None:
    pure = [SRC / "workflow.py", SRC / "model.py", SRC / "views.py", *_python_files(SRC / "policy")]
    problems = []
    for path in pure:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                if name.split(".")[:2] in (
                    ["keyturn", "server"],
                    ["keyturn", "store"],
                    ["keyturn", "service"],
                ):
                    problems.append(f"{path.relative_to(SRC)}:{node.lineno} imports {name}")
    assert problems == [], problems
