"""The SHA-256 whose state a record carries between tus requests: the same digest as hashlib
for any split of any bytes, resumed from text, and a state from elsewhere refused."""

from __future__ import annotations

import gc
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.uploads import hashstate
from gateway.uploads.hashstate import (
    CTX_SIZE,
    FORMAT,
    ResumableSha256,
    available,
    hasher_at,
    saved_state,
)


def test_openssl_gives_its_state_here():
    assert available()


@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=6))
def test_any_split_saved_and_resumed_gives_hashlibs_digest(data, cuts):
    hasher = ResumableSha256()
    start = 0
    for cut in sorted(cuts):
        hasher.update(data[start:cut])
        hasher = ResumableSha256.resume(hasher.state())  # another request, another process
        start = max(start, cut)
    hasher.update(bytearray(data[start:]))
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_bytes_bytearray_and_views_hash_alike_and_hexdigest_does_not_end_it():
    data = bytes(range(256)) * 41
    hasher = ResumableSha256()
    hasher.update(data[:100])
    hasher.update(bytearray(data[100:5000]))
    hasher.update(memoryview(bytearray(data))[5000:9000])
    assert hasher.hexdigest() == hashlib.sha256(data[:9000]).hexdigest()
    hasher.update(memoryview(data)[9000:])  # a read-only view
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_the_empty_state_is_the_empty_digest():
    assert ResumableSha256().hexdigest() == hashlib.sha256(b"").hexdigest()


def test_a_state_is_tagged_with_its_format_and_byte_order():
    state = ResumableSha256().state()
    assert state.startswith(FORMAT + ":")
    assert FORMAT.endswith((":little", ":big"))


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ("", "not a SHA-256 state of this format and byte order: ''"),
        ("openssl-sha256-ctx:1:middle:" + "A" * 152, "byte order: 'openssl-sha256-ctx:1:middle'"),
        ("openssl-sha256-ctx:2:little:" + "A" * 152, "byte order: 'openssl-sha256-ctx:2:little'"),
        (FORMAT + ":not base64!", "^a SHA-256 state that is not base64$"),
        # a whole state with one stray character: never read past it
        (FORMAT + ":" + "A" * 76 + "!" + "A" * 76, "^a SHA-256 state that is not base64$"),
        (FORMAT + ":" + "QUFB" * 10, "^a SHA-256 state of 30 bytes, not 112$"),
    ],
)
def test_a_foreign_or_damaged_state_is_refused(state, why):
    with pytest.raises(ValueError, match=why):
        ResumableSha256.resume(state)


def test_the_state_is_the_whole_struct():
    import base64

    raw = base64.b64decode(ResumableSha256().state().rsplit(":", 1)[1])
    assert len(raw) == CTX_SIZE == 112


# -- which hasher a request continues with ------------------------------------------------------
def test_an_upload_starting_here_gets_a_resumable_hasher_and_saves_its_state():
    hasher = hasher_at(0, "")
    assert isinstance(hasher, ResumableSha256)
    hasher.update(b"abc")
    assert saved_state(hasher) == hasher.state() != ""
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_an_upload_under_way_goes_on_from_its_saved_state():
    first = ResumableSha256()
    first.update(b"abc")
    hasher = hasher_at(3, first.state())
    assert isinstance(hasher, ResumableSha256)
    hasher.update(b"def")
    assert hasher.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()


def test_an_upload_under_way_without_a_readable_state_is_left_to_processing(caplog):
    assert hasher_at(3, "") is None
    assert caplog.records == []
    assert hasher_at(3, "openssl-sha256-ctx:2:little:" + "A" * 152) is None
    assert [r.getMessage() for r in caplog.records] == [
        "a tus upload's SHA-256 state cannot be read here; processing will hash it"
    ]


def test_without_openssls_state_only_an_upload_starting_here_is_hashed(monkeypatch):
    state = ResumableSha256().state()
    monkeypatch.setattr(hashstate, "available", lambda: False)
    hasher = hasher_at(0, "")
    assert not isinstance(hasher, ResumableSha256)
    assert hasher is not None and hasher.name == "sha256"
    assert saved_state(hasher) == ""  # one request: nothing to resume from
    assert hasher_at(3, state) is None
    assert saved_state(None) == ""


@pytest.mark.parametrize(
    "wrap", [bytearray, lambda b: memoryview(bytearray(b))], ids=["bytearray", "view"]
)
def test_hashing_a_buffer_lets_go_of_it_at_once(wrap):
    """A request's chunks are freed as soon as they are hashed: hashing leaves no export on the
    buffer (it can be resized) and no reference cycle that only the garbage collector would free
    (a 1 MiB chunk per read kept alive that way held tens of MiB per worker, bench/tus.py)."""
    gc.disable()
    try:
        gc.collect()
        data = wrap(bytes(range(256)) * 64)
        hasher = ResumableSha256()
        hasher.update(data)
        buffer = data.obj if isinstance(data, memoryview) else data
        if isinstance(data, memoryview):
            data.release()
        buffer.extend(b"x")  # BufferError while anything still exports it
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert hasher.hexdigest() == hashlib.sha256(bytes(range(256)) * 64).hexdigest()
