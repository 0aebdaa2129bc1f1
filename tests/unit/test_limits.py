"""broker.limits (token bucket, admission, Origin allow-list) and broker.logctx.redact: pure
functions, table-driven. The behaviour over the wire is in tests/integration/test_limits.py
and test_security.py."""

from __future__ import annotations

import pytest

from broker.limits import Admission, TokenBucket, Verdict, origin_allowed
from broker.logctx import redact

A, L, X = Verdict.ALLOWED, Verdict.LIMITED, Verdict.EXCEEDED


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_burst_then_limited_then_exceeded():
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [A, A, A]
    # empty: limited, going into debt, until the debt reaches the burst
    assert [bucket.take() for _ in range(3)] == [L, L, X]
    assert bucket.tokens == -3


def test_bucket_refills_debt_first():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=2, clock=clock)
    assert [bucket.take() for _ in range(3)] == [A, A, L]  # tokens -1
    clock.now += 0.5  # +1: 0 tokens
    assert bucket.take() is L  # -1
    clock.now += 1.0  # +2: 1 token
    assert bucket.take() is A
    clock.now += 100  # never above the burst
    assert [bucket.take() for _ in range(3)] == [A, A, L]


def test_bucket_at_the_rate_is_never_limited():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=1, clock=clock)
    for _ in range(1000):
        assert bucket.take() is A
        clock.now += 0.1


def test_admission_counts_and_refuses():
    adm = Admission()
    assert [adm.admit(2) for _ in range(3)] == [None, None, "over-capacity"]
    adm.release()
    assert adm.admit(2) is None
    assert adm.admit(0) is None  # 0: no limit
    adm.shutting_down = True
    assert adm.admit(0) == "shutting-down"
    for _ in range(10):
        adm.release()
    assert adm.count == 0


@pytest.mark.parametrize("origin, allowed, ok", [
    ("https://a.example.com", (), True),
    (None, ("https://a.example.com",), True),
    ("https://a.example.com", ("https://a.example.com",), True),
    ("https://A.Example.com/", ("https://a.example.com",), True),
    ("http://a.example.com", ("https://a.example.com",), False),
    ("https://a.example.com:8443", ("https://a.example.com",), False),
    ("https://x.example.com", ("https://*.example.com",), True),
    ("https://example.com", ("https://*.example.com",), False),
    ("https://a.example.com.evil.net", ("https://*.example.com",), False),
    ("null", ("https://a.example.com",), False),
    ("null", ("*",), True),
])
def test_origin_allowed(origin, allowed, ok):
    assert origin_allowed(origin, allowed) is ok


@pytest.mark.parametrize("text, clean", [
    ("GET /ws/?token=abc123 HTTP/1.1", "GET /ws/?token=*** HTTP/1.1"),
    ('"WebSocket /ws/?x=1&token=abc&y=2" [accepted]', '"WebSocket /ws/?x=1&token=***&y=2" [accepted]'),
    ("/ws/?app_key=k1&login_id=bob&profile_key=k2", "/ws/?app_key=***&login_id=bob&profile_key=***"),
    ("/healthz?TOKEN=abc", "/healthz?TOKEN=***"),
    ("no query here", "no query here"),
    ("/ws/?tokens=1", "/ws/?tokens=1"),
])
def test_redact(text, clean):
    assert redact(text) == clean
