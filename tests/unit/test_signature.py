"""broker.signature: HMAC-SHA256 over "<timestamp>." + body, checked with a tolerance."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from broker.signature import BadSignature, SignatureError, StaleSignature, sign, verify

BODY = b'{"events":[{"id":"e1","type":"online","at":1700000000.5}]}'
SECRET = "whsec_test"
NOW = 1_700_000_000


def test_round_trip() -> None:
    signature = sign(BODY, SECRET, NOW)
    assert signature.startswith("v1=") and len(signature) == 3 + 64
    verify(BODY, str(NOW), signature, SECRET, now=NOW)
    verify(BODY, str(NOW), signature, SECRET, now=NOW + 299)  # within the tolerance
    verify(BODY, str(NOW), signature, SECRET, now=NOW - 299)  # a clock behind


def test_the_algorithm_other_languages_follow() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET, NOW) == f"v1={expected}"


@pytest.mark.parametrize("body, timestamp, secret", [
    (BODY.replace(b"online", b"offline"), str(NOW), SECRET),  # forged body
    (BODY, str(NOW), "another secret"),  # wrong secret
    (BODY, str(NOW + 1), SECRET),  # tampered timestamp
])
def test_forged_tampered_or_other_secret_is_bad(body: bytes, timestamp: str, secret: str) -> None:
    with pytest.raises(BadSignature):
        verify(body, timestamp, sign(BODY, SECRET, NOW), secret, now=NOW)


@pytest.mark.parametrize("timestamp, signature", [
    (str(NOW), ""),  # missing
    (str(NOW), "v1="),
    (str(NOW), "v0=" + sign(BODY, SECRET, NOW)[3:]),  # another scheme only
    (str(NOW), sign(BODY, SECRET, NOW)[3:]),  # no scheme
    (str(NOW), "v1=zz" + sign(BODY, SECRET, NOW)[5:]),
    (str(NOW), "v1=" + "é" * 64),  # not ASCII
    ("", "SIG"),  # missing timestamp
    ("17e8", "SIG"),
    ("-1", "SIG"),
    (f"{NOW}.0", "SIG"),
])
def test_missing_or_malformed_header_is_bad(timestamp: str, signature: str) -> None:
    signature = signature.replace("SIG", sign(BODY, SECRET, NOW))
    with pytest.raises(BadSignature):
        verify(BODY, timestamp, signature, SECRET, now=NOW)


def test_replay_with_an_old_timestamp_is_stale() -> None:
    old = NOW - 301
    with pytest.raises(StaleSignature):
        verify(BODY, str(old), sign(BODY, SECRET, old), SECRET, now=NOW)
    with pytest.raises(StaleSignature):  # from the future too
        verify(BODY, str(NOW + 301), sign(BODY, SECRET, NOW + 301), SECRET, now=NOW)
    verify(BODY, str(old), sign(BODY, SECRET, old), SECRET, now=NOW, tolerance=400)
    # both are SignatureErrors: one except clause for a receiver
    assert issubclass(StaleSignature, SignatureError) and issubclass(BadSignature, SignatureError)


def test_rotation_any_of_several_v1_values_matches() -> None:
    old, new = sign(BODY, "old secret", NOW), sign(BODY, "new secret", NOW)
    header = f"{old}, {new}"
    verify(BODY, str(NOW), header, "old secret", now=NOW)
    verify(BODY, str(NOW), header, "new secret", now=NOW)
    with pytest.raises(BadSignature):
        verify(BODY, str(NOW), header, "third secret", now=NOW)


def test_clock_default_is_now() -> None:
    import time

    stamp = int(time.time())
    verify(BODY, str(stamp), sign(BODY, SECRET, stamp), SECRET)
    with pytest.raises(StaleSignature):
        verify(BODY, "1000", sign(BODY, SECRET, 1000), SECRET)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        sign(BODY, "", NOW)
    with pytest.raises(ValueError):
        verify(BODY, str(NOW), sign(BODY, SECRET, NOW), "", now=NOW)
