"""What both modes of the operator CLI share: argument types and output."""

from __future__ import annotations

import argparse
import json
import sys


def count(text: str) -> int:
    """A size argument: a non-negative integer."""
    return _non_negative(int, text, 'integer')


def seconds(text: str) -> float:
    """A period argument: a non-negative number of seconds."""
    return _non_negative(float, text, 'number of seconds')


def _non_negative(parse, text: str, what: str):
    try:
        value = parse(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a non-negative {what}')
    return value


def emit(args, data, text: str) -> None:
    """Print a command's result: JSON with --json, else the text."""
    print(json.dumps(data, indent=1, default=str) if args.json else text)


def fail(args, kind: str, message: str) -> int:
    """Report an error (JSON with --json) and return exit status 2."""
    if args.json:
        print(json.dumps({'error': kind, 'message': message}))
    else:
        print(f'imagebackend: error: {kind}: {message}', file=sys.stderr)
    return 2
