"""``python -m keyturn.ledger``: the offline verifier with the fewest dependencies.

Runs from the standard library, `cryptography` and `rfc8785` only (no database driver, web framework or
configuration): ``python -m keyturn.ledger verify --bundle DIR [--checkpoint FILE…] [--key KEY…]`` and
``python -m keyturn.ledger check-proof FILE [--key KEY…]``. `keyturn ledger …` offers the same and more.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from keyturn.ledger.bundle import BundleError, verify_bundle
from keyturn.ledger.note import NoteError, VerifierKey
from keyturn.ledger.prove import InvalidProof, check_inclusion_document
from keyturn.ledger.verify import CheckpointSource


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keyturn.ledger", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="verify an exported bundle")
    verify.add_argument("--bundle", type=Path, required=True)
    verify.add_argument(
        "--checkpoint", type=Path, action="append", default=[], help="a checkpoint kept elsewhere"
    )
    verify.add_argument("--key", action="append", default=[], help="trusted verifier key")
    verify.add_argument("--json", action="store_true")
    check = commands.add_parser("check-proof", help="check an inclusion proof")
    check.add_argument("file", type=Path)
    check.add_argument("--key", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        keys = [VerifierKey.parse(k) for k in args.key]
    except NoteError as exc:
        print(f"error: --key: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-proof":
        try:
            print(check_inclusion_document(json.loads(args.file.read_text(encoding="utf-8")), keys))
        except (OSError, ValueError) as exc:
            print(f"INVALID: {exc}" if isinstance(exc, InvalidProof) else f"error: {args.file}: {exc}")
            return 1
        return 0
    try:
        external = [
            CheckpointSource(p.read_text(encoding="utf-8"), str(p), external=True) for p in args.checkpoint
        ]
        result = verify_bundle(args.bundle, external, keys)
    except (OSError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
