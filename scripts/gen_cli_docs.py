"""Regenerate docs/cli.md, the CLI reference, from the Typer app (``--check``: fail if stale).

    python scripts/gen_cli_docs.py          # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check  # exit 1 when docs/cli.md differs from the app

This does what ``typer sanitize.cli.root utils docs`` does, but imports ``sanitize.cli.root`` as a
normal module: the ``typer`` command loads the file without registering it in ``sys.modules``, and
the CLI's dataclasses cannot be built that way. Help texts are copied as plain text. Every
command the app registers (``sanitize/cli/``) is documented.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import typer
import typer.main
from typer.cli import MARKUP_MODE_KEY, get_docs_for_click

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "cli.md"
HEADER = ("<!-- Generated from the Typer app by `python scripts/gen_cli_docs.py`; edit the help texts in\n"
          "     sanitize/cli/*.py, not this file. tests/test_docs.py fails when it is stale. -->\n\n")


def _in_checkout(command) -> bool:
    """Whether a command's code lives in this checkout. An editable install of another checkout
    can make ``sanitize.cli_<name>`` modules of that checkout importable here; the reference
    documents this one."""
    callbacks = [command.callback, *(c.callback for c in getattr(command, "commands", {}).values())]
    files = [inspect.getsourcefile(inspect.unwrap(cb)) for cb in callbacks if cb is not None]
    return not files or any(Path(f).resolve().is_relative_to(ROOT) for f in files)


def render() -> str:
    """The Markdown reference of the ``sanitize`` command and all its sub-commands."""
    sys.path.insert(0, str(ROOT))
    from sanitize.cli.root import app

    command = typer.main.get_command(app)
    for name in [n for n, c in command.commands.items() if not _in_checkout(c)]:
        del command.commands[name]
    ctx = typer.Context(command, info_name="sanitize")
    ctx.ensure_object(dict)[MARKUP_MODE_KEY] = None  # plain help text: Markdown, not HTML entities
    body = get_docs_for_click(obj=command, ctx=ctx, name="sanitize", title="sanitize CLI reference")
    return HEADER + body.strip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is stale, write nothing")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
