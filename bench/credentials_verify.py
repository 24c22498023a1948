"""What checking one temporary credential costs: HS256 against EdDSA (Ed25519), side by side.

Each round signs one token per algorithm with the same claims, then times ``jwt.decode``
(signature, issuer, required claims) for each, alternating, and reports the median of
the rounds in microseconds per verify and the EdDSA / HS256 ratio.

    python bench/credentials_verify.py            # 7 rounds of 5,000 verifies each
    python bench/credentials_verify.py --rounds 3 --count 1000
"""

from __future__ import annotations

import argparse
import statistics
import time

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CLAIMS = {
    "iss": "asgi_autoproxy",
    "sub": "user-42",
    "models": ["gpt-4o-mini"],
    "iat": 1_900_000_000,
    "exp": 1_900_000_600,
    "jti": "Qm9vbGVhbkp0aUZvckJlbmNo",
}
OPTIONS = {
    "require": ["exp", "iat", "jti", "sub", "iss"],
    "verify_exp": False,
    "verify_iat": False,
}


def per_verify_us(token: str, key: object, algorithm: str, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        jwt.decode(token, key, algorithms=[algorithm], issuer="asgi_autoproxy", options=OPTIONS)
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    secret = b"s" * 48
    private = Ed25519PrivateKey.generate()
    hs = jwt.encode(CLAIMS, secret, algorithm="HS256", headers={"kid": "asgi_autoproxy/v1"})
    ed = jwt.encode(CLAIMS, private, algorithm="EdDSA", headers={"kid": "asgi_autoproxy/v1"})
    public = private.public_key()
    hs_runs, ed_runs = [], []
    for _ in range(args.rounds):
        hs_runs.append(per_verify_us(hs, secret, "HS256", args.count))
        ed_runs.append(per_verify_us(ed, public, "EdDSA", args.count))
    hs_median, ed_median = statistics.median(hs_runs), statistics.median(ed_runs)
    print(f"HS256 verify: {hs_median:.1f} us (token {len(hs)} bytes)")
    print(f"EdDSA verify: {ed_median:.1f} us (token {len(ed)} bytes)")
    print(f"EdDSA / HS256: {ed_median / hs_median:.2f}x")


if __name__ == "__main__":
    main()
