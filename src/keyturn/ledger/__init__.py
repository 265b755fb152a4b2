"""The tamper-evident ledger: RFC 6962 Merkle tree of events, C2SP signed checkpoints, offline verification,
export bundles, inclusion proofs and the evidence report. See docs/ledger.md.

`merkle`, `note`, `verify`, `bundle` and `prove` import no database or server code, so the offline verifier
runs from a plain install: ``python -m keyturn.ledger verify --bundle DIR``.
"""
