"""Signing keys and a JWKS endpoint on loopback, as an identity provider (Better Auth) serves.

The server runs in a thread with a real socket, so the API fetches its keys over HTTP exactly
as in production; it counts the fetches, can fail them (HTTP 500) or stop listening altogether.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class SigningKey:
    """A private key, its `kid` and algorithm; `jwk` is the public half as a JWKS lists it."""

    alg: str
    private: PrivateKey = field(repr=False)
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def generate(cls, alg: str) -> SigningKey:
        private: PrivateKey
        if alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        elif alg == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(alg)
        return cls(alg=alg, private=private)

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **headers}
        )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def hmac_token(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """An HS256 token built by hand: PyJWT refuses to use a PEM public key as an HMAC secret,
    which is exactly what an algorithm-confusion attacker does."""
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def unsigned_token(claims: dict[str, Any]) -> str:
    return f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(claims)}."


class JwksServer:
    """GET /api/auth/jwks answers `{"keys": [...]}` of the current keys."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys: list[dict[str, Any]] = [key.jwk for key in keys]
        self.hits = 0
        self.failing = False  # answer 500 instead of the document
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits += 1
                    failing = server.failing
                    body = json.dumps({"keys": server.keys}).encode()
                if self.path != "/api/auth/jwks" or failing:
                    self.send_response(404 if self.path != "/api/auth/jwks" else 500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/api/auth/jwks"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def publish(self, *keys: SigningKey, replace: bool = False) -> None:
        with self._lock:
            jwks = [key.jwk for key in keys]
            self.keys = jwks if replace else [*self.keys, *jwks]

    def publish_raw(self, *entries: dict[str, Any]) -> None:
        with self._lock:
            self.keys = [*self.keys, *entries]

    def stop(self) -> None:
        """Stop listening: connections are refused from now on."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)


class FakeClock:
    """A monotonic clock the tests move forward (instead of sleeping for a minute)."""

    def __init__(self) -> None:
        # A whole second, not the monotonic clock's fraction: the tests add whole seconds and
        # compare differences exactly (60 s after a fetch refetches), which floats with a
        # fraction would miss by a rounding error now and then. Not earlier than now: the app
        # recorded its start-up fetch on the real clock.
        self.now = float(math.ceil(time.monotonic()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
