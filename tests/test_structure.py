"""The imports point one way: transport -> service -> feed/repository -> models."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "reports_service"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it, as dotted names."""
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("reports_service"))
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if not module.startswith("reports_service"):
                continue
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return {
        name
        for name in found
        if (PACKAGE.parent / name.replace(".", "/")).exists()
        or (PACKAGE.parent / (name.replace(".", "/") + ".py")).exists()
    }


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def imported_by(module: str) -> set[str]:
    return {short(m) for m in MODULES[f"reports_service.{module}"]}


def short(name: str) -> str:
    return name.removeprefix("reports_service.")


def test_the_parse_sees_imports() -> None:
    assert "repository" in imported_by("service")
    assert "resources.connection" in imported_by("resources.route")


@pytest.mark.parametrize("module", ["records", "errors", "codes", "tasks"])
def test_leaves_import_nothing_of_the_package(module: str) -> None:
    assert imported_by(module) <= {"reports_service"}


def test_models_know_only_records() -> None:
    assert imported_by("models") <= {"records"}


ABOVE_THE_REPOSITORY = {"feed", "service", "session", "outbox", "config", "app", "asgi", "cli"}


@pytest.mark.parametrize("module", ["repository", "point_reader", "watch", "db"])
def test_data_access_imports_nothing_above_it(module: str) -> None:
    found = imported_by(module)
    assert not found & ABOVE_THE_REPOSITORY
    assert not {m for m in found if m.startswith(("resources", "middleware"))}


@pytest.mark.parametrize("module", ["service", "feed", "session", "outbox", "limits", "protocol"])
def test_below_the_transport_nothing_imports_falcon_resources(module: str) -> None:
    found = imported_by(module)
    assert not {m for m in found if m.startswith(("resources", "middleware", "app", "asgi"))}


def test_protocol_and_the_document_do_not_import_falcon_handlers() -> None:
    source = (PACKAGE / "protocol.py").read_text()
    assert "falcon import media" not in source
    assert not {"middleware.auth", "session"} & imported_by("asyncapi")


def test_nothing_imports_the_module_level_app() -> None:
    users = sorted(short(m) for m, found in MODULES.items() if "reports_service.asgi" in found)
    assert users == []


def test_close_codes_are_defined_once() -> None:
    """No module but codes.py binds a name to a WebSocket close code."""
    codes = {1001, 1008, 1009, 1013, 4001, 3404}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "codes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and node.value.value in codes
            ):
                found.append(f"{module_name(path)}:{node.lineno}")
    assert found == []


def test_the_client_library_imports_only_the_protocol() -> None:
    """reports_service.client runs in users' programs: nothing of the server side."""
    assert imported_by("client") <= {"reports_service", "protocol", "codes"}
