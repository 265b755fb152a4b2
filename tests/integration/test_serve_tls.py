"""`keyturn serve` with `tls_certfile`/`tls_keyfile` serves HTTPS itself (no proxy in front)."""

from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.live import DEFAULT_POLICY, free_port, keyturn_executable


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_with_the_configured_certificate(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(DEFAULT_POLICY, encoding="utf-8")
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env |= {
        "KEYTURN_TLS_CERTFILE": str(cert),
        "KEYTURN_TLS_KEYFILE": str(key),
        "KEYTURN_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [keyturn_executable(), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    trusted = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                answer = httpx.get(f"https://127.0.0.1:{port}/readyz", verify=trusted, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the HTTPS server never answered"
                time.sleep(0.2)
        assert answer.status_code == 200
        try:
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            raise AssertionError("plain HTTP was answered on the TLS port")
        except httpx.TransportError:
            pass
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_key_that_does_not_fit_the_certificate_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(DEFAULT_POLICY, encoding="utf-8")
    cert, _ = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = self_signed(tmp_path / "other")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env |= {"KEYTURN_TLS_CERTFILE": str(cert), "KEYTURN_TLS_KEYFILE": str(other_key)}
    before = sorted(os.listdir(tmp_path))
    finished = subprocess.run(
        [keyturn_executable(), "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = finished.stderr.strip().splitlines()
    assert finished.returncode == 2 and len(lines) == 1, finished.stderr
    assert "tls_certfile" in lines[0] and "cert.pem" in lines[0]
    assert sorted(os.listdir(tmp_path)) == before
