"""The package's shape, checked as a reviewer would: a public API that resolves, and module-level
imports that flow one way (no cycles), so a newcomer can read the layers from the bottom up."""

from __future__ import annotations

import ast
from pathlib import Path

import sanitize

PACKAGE = Path(sanitize.__file__).parent


def test_every_public_name_resolves() -> None:
    for name in sanitize.__all__:
        assert getattr(sanitize, name) is not None, name


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports when it is imported (function bodies and
    ``if TYPE_CHECKING:`` blocks do not run then, so they are not edges)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if node.module or not node.level:  # ``from . import scan`` imports the submodule, not the
                found.add(base)                  # package (its own parent, being imported already)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "sanitize"}


def test_module_level_imports_have_no_cycles() -> None:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: sorted(_top_level_imports(path) & modules.keys() - {name}) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_no_module_imports_the_command_line() -> None:
    """The command line sits on top: the library never imports it (the console-script door and
    ``python -m sanitize`` aside)."""
    importers = {_module_name(p) for p in PACKAGE.rglob("*.py")
                 if any(name == "sanitize.cli" or name.startswith("sanitize.cli.") for name in _top_level_imports(p))}
    assert all(name.startswith("sanitize.cli") for name in importers), importers


def test_every_import_resolves_including_those_inside_functions() -> None:
    """The command line imports most of the library inside functions (so that it starts fast);
    a module moved in a reorganisation must not leave such an import pointing nowhere."""
    import importlib.util

    missing = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = package.split(".")
                target = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
                if importlib.util.find_spec(target) is None:
                    missing.append(f"{path.name}:{node.lineno} {target}")
    assert not missing, missing


def test_both_kinds_of_data_offer_what_the_pipeline_asks() -> None:
    """The pipeline writes the cleaned copy and the report page through the Dataset protocol only."""
    from sanitize.data.images import ImageDataset
    from sanitize.data.protocol import Dataset
    from sanitize.data.rows import FeatureDataset

    wanted = {name for name in dir(Dataset) if not name.startswith("_")} | set(Dataset.__annotations__)
    for kind in (ImageDataset, FeatureDataset):
        offered = set(dir(kind)) | set(getattr(kind, "__dataclass_fields__", {}))
        assert wanted <= offered, (kind.__name__, wanted - offered)
    source = (PACKAGE / "pipeline.py").read_text(encoding="utf-8")
    assert "isinstance" not in source and "FeatureDataset" not in source and "ImageDataset" not in source
