# ruff: noqa: E501  (credentials are kept whole on one line each, as they appear in the wild)
"""A corpus of real credential formats, as they turn up in an agent's request, and near-misses.

Every sample is in the issuer's documented format (AWS's documented example keys, structurally valid tokens
with made-up bodies); none is a live credential. `SECRETS` must be redacted wherever they appear; `NEAR_MISSES`
look alike but carry no secret and must stay readable (a reviewer has to see what is being asked).
Used by tests/unit/test_redact.py, tests/adversarial/test_secret_surfaces.py and benchmarks/redact_bench.py.
"""

from __future__ import annotations

import base64


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# name -> (text containing one credential, the part of it that must never show). The name says the format.
SECRETS: dict[str, tuple[str, str]] = {
    "aws access key id (AKIA)": ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    "aws temporary key id (ASIA)": ("export AWS_ACCESS_KEY_ID=ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A"),
    "aws secret access key (env)": (
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    "aws secret access key (ini)": (
        "[default]\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    "authorization bearer (opaque)": (
        "Authorization: Bearer 8f3c2a9e0b1d4f6a7c5e3b2d1f0a9c8e",
        "8f3c2a9e0b1d4f6a7c5e3b2d1f0a9c8e",
    ),
    "authorization bearer (curl)": (
        "curl -H 'Authorization: Bearer t0k3n-8f3c2a9e0b1d4f6a' https://api.internal",
        "t0k3n-8f3c2a9e0b1d4f6a",
    ),
    "authorization basic": ("Authorization: Basic " + _b64("admin:Sup3rS3cret"), _b64("admin:Sup3rS3cret")),
    "bearer token in prose": (
        "retry with Bearer 8f3c2a9e0b1d4f6a7c5e3b2d1f0a9c8e please",
        "8f3c2a9e0b1d4f6a7c5e3b2d1f0a9c8e",
    ),
    "libpq password": (
        "host=db.internal port=5432 dbname=prod user=admin password=Sup3rS3cret sslmode=require",
        "Sup3rS3cret",
    ),
    "libpq quoted password": (
        "host=db.internal user=admin password='correct horse battery'",
        "correct horse battery",
    ),
    "jdbc user and password": (
        "jdbc:postgresql://db.internal:5432/prod?user=admin&password=Sup3rS3cret&ssl=true",
        "Sup3rS3cret",
    ),
    "ado.net password": (
        "Server=tcp:db.internal,1433;Database=prod;User Id=admin;Password=Sup3rS3cret;Encrypt=True;",
        "Sup3rS3cret",
    ),
    "odbc pwd": (
        "Driver={ODBC Driver 18 for SQL Server};Server=db;UID=admin;PWD={Sup3rS3cret};",
        "Sup3rS3cret",
    ),
    "pgp private key block": (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGXyZ1QBCADJ...\n-----END PGP PRIVATE KEY BLOCK-----",
        "lQOYBGXyZ1QBCADJ",
    ),
    "pem rsa private key": (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA...\n-----END RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEA",
    ),
    "pem pkcs8 private key": (
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI...\n-----END PRIVATE KEY-----",
        "MC4CAQAwBQYDK2VwBCIEI",
    ),
    "pem encrypted private key": (
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkqhkiG9w0BBQ0w...",
        "MIIFHzBJBgkqhkiG9w0BBQ0w",
    ),
    "openssh private key": (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA...",
        "b3BlbnNzaC1rZXktdjEAAAAA",
    ),
    "github classic token": (
        "ghp_" + "wWPw5k4aXcaT4fNP0UcnZwJUVFk6LO2rINUx",
        "wWPw5k4aXcaT4fNP0UcnZwJUVFk6LO2rINUx",
    ),
    "github app token": (
        "ghs_" + "16C7e42F292c6912E7710c838347Ae178B4a",
        "16C7e42F292c6912E7710c838347Ae178B4a",
    ),
    "github fine-grained token": (
        "github_pat_11ABCDEFG0" + "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    ),
    "slack bot token": (
        "xoxb-" + "2048112345-4096123456789-aBcDeFgHiJkLmNoPqRsTuVwX",
        "4096123456789-aBcDeFgHiJkLmNoPqRsTuVwX",
    ),
    "slack user token": (
        "xoxp-" + "2048112345-4096123456789-4096123456789-0123456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdef",
    ),
    "slack webhook url": (
        "https://hooks.slack.com/services/" + "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "XXXXXXXXXXXXXXXXXXXXXXXX",
    ),
    "stripe live secret key": (
        "sk_live_" + "51H8k2bJ3lKx9QwErTyUiOpAsDfGhJkL",
        "51H8k2bJ3lKx9QwErTyUiOpAsDfGhJkL",
    ),
    "stripe restricted key": (
        "rk_live_" + "51H8k2bJ3lKx9QwErTyUiOpAsDfGhJkL",
        "51H8k2bJ3lKx9QwErTyUiOpAsDfGhJkL",
    ),
    "stripe webhook secret": (
        "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ),
    "google api key": ("AIza" + "SyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI", "SyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"),
    "google oauth access token": (
        "ya29." + "a0AfH6SMBx3yRq8ZkVjWbN4mE2cU7pL9tHgF",
        "a0AfH6SMBx3yRq8ZkVjWbN4mE2cU7pL9tHgF",
    ),
    "google oauth client secret": (
        "GOCSPX-" + "1a2B3c4D5e6F7g8H9i0JkLmNoPqR",
        "1a2B3c4D5e6F7g8H9i0JkLmNoPqR",
    ),
    "jwt": (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ),
    "url with user:password@": ("postgres://admin:Sup3rS3cret@db.internal:5432/prod", "Sup3rS3cret"),
    "https url with credentials": ("clone https://deploy:gh0stW0rd@git.internal/org/repo.git", "gh0stW0rd"),
    "redis url with password only": ("redis://:Sup3rS3cret@cache.internal:6379/0", "Sup3rS3cret"),
    "openai-style secret key": (
        "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
        "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
    ),
    "anthropic-style secret key": (
        "sk-ant-api03-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6h",
        "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6h",
    ),
    "gitlab token": ("glpat-" + "xYz1AbC2dEf3GhI4jKl5", "xYz1AbC2dEf3GhI4jKl5"),
    "npm token": ("npm_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"),
    "json text with a password": ('{"user": "admin", "password": "hunter2"}', "hunter2"),
    "yaml text with an api key": ("service:\n  api_key: 7f3c2a9e0b1d4f6a", "7f3c2a9e0b1d4f6a"),
    "keyturn api key": ("kt_AbCd1234_" + "x" * 43, "x" * 43),
}

# name -> text that looks like one but carries no secret.
NEAR_MISSES: dict[str, str] = {
    "principal id": "user:alice@example.com",
    "scrubbed placeholder": "curl -H 'token: [secret DEPLOY_TOKEN]' refused",
    "template placeholder": "password=<your password>",
    "email address": "alice@example.com",
    "mailto": "mailto:alice@example.com",
    "url without credentials": "https://example.com:8443/path?q=1",
    "url with a user only": "ssh://git@github.com/org/repo.git",
    "url with @ in the path": "https://example.com:8443/users/@alice",
    "postgres url without password": "postgres://db.internal:5432/prod",
    "short AKIA": "AKIA123",
    "AKIA too short": "AKIAIOSFODNN7EXAMP",
    "AKIA inside a word": "XAKIAIOSFODNN7EXAMPLEX",
    "public key": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA...\n-----END PUBLIC KEY-----",
    "certificate": "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----",
    "pgp public key block": "-----BEGIN PGP PUBLIC KEY BLOCK-----\nmQENBF...",
    "password policy": "the password policy requires 12 characters",
    "password prompt": "Password:",
    "empty password assignment": "password=&user=admin",
    "etc passwd": "cat /etc/passwd: permission denied",
    "authorization prose": "Authorization is required for this endpoint",
    "bearer prose": "the Bearer of this letter is trusted",
    "basic prose": "Basic information about the table",
    "token count": "max_tokens: 4096",
    "tokenizer": "tokenizer=cl100k_base",
    "secret name (k8s)": "secretName: tls-cert",
    "git sha": "3f786850e387550fdab836ed7e6dc881de23001b",
    "uuid": "123e4567-e89b-12d3-a456-426614174000",
    "sha256 digest": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "keyed digest marker": "hmac-sha256:AbCdEfGhIjKlMnOp:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "sk- too short": "sk-short",
    "ghp too short": "ghp_short",
    "xoxb alone": "xoxb-",
    "eyJ alone": "eyJ",
    "stripe publishable prose": "pk_ prefixes are publishable",
    "query string": "rows=5000&format=csv&table=customers",
    "sql": "SELECT id, name FROM customers WHERE created_at > now() - interval '1 day'",
    "aws arn": "arn:aws:iam::123456789012:role/deploy",
    "long word": "pneumonoultramicroscopicsilicovolcanoconiosis",
    "base64 image fragment": "iVBORw0KGgoAAAANSUHEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg",
}
