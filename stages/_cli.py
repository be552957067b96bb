"""What every stage CLI shares: argument parsing conventions and turning known errors into one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .params import ParamsError


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return ap


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage; a bad parameter, path or file ends it with one clear line and exit status 2."""
    try:
        main(argv)
    except (ParamsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
