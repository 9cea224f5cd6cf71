"""The store's command packer writes exactly what redis-py's would, and refuses what it refuses."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis._parsers import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer

from proxy_core.stores.redis_connect import HiredisPacker

ARGS = [
    ("EVALSHA", "0123abcd", 2, "penny:{w:T1}:a", "penny:{w:T1}:b", "é ü", -5, 0, 2**70, 1.5, 0.1, 1 / 3, 1e20, -0.0,
     float("inf"), b"raw\x00bytes", ""),
    ("SCRIPT LOAD", "return 1"),
    (b"SCRIPT LOAD", b"return 1"),
    ("PING",),
]


def redis_py(*args: Any) -> bytes:
    """What redis-py's own packer (hiredis, after its per-argument encoder) writes."""
    encoder = Encoder("utf-8", "strict", True)  # type: ignore[no-untyped-call]
    packer: Any = HiredisRespSerializer(PythonRespSerializer(6000, encoder.encode).pack,  # type: ignore[no-untyped-call]
                                        encoder.encode)
    return b"".join(packer.pack(*args))


@pytest.mark.parametrize("args", ARGS)
def test_packs_byte_for_byte_as_redis_py(args: tuple[object, ...]) -> None:
    assert b"".join(HiredisPacker().pack(*args)) == redis_py(*args)


def test_what_hiredis_cannot_pack_goes_to_redis_py() -> None:
    with pytest.raises(redis.DataError):
        HiredisPacker().pack("SET", "k", True)  # redis-py refuses a bool
    view = memoryview(b"value")
    assert b"".join(HiredisPacker().pack("SET", "k", view)) == redis_py("SET", "k", view)
