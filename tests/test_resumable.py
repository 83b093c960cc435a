"""The resumable store's pieces that need no server: what a final upload's type is sniffed from
(a partial's first bytes, read no further than needed)."""

from __future__ import annotations

from gateway.storage.resumable import ResumableUploads


class Chunks:
    """A chunk store holding one partial's bytes, which counts the pieces it was asked for."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.keys: list[str] = []
        self.served = 0

    def read(self, key: str):
        self.keys.append(key)
        for piece in self.pieces:
            self.served += 1
            yield piece


def test_a_partials_head_is_its_first_pieces_up_to_the_size_and_no_more_is_read():
    chunks = Chunks([b"abc", b"def", b"ghi", b"jkl"])
    uploads = ResumableUploads(chunks)
    assert uploads.partial_head("m1", 5) == b"abcdef"  # whole pieces, at least the size
    assert chunks.keys == [ResumableUploads.partial_key("m1")] and chunks.served == 2
    exact = Chunks([b"abc", b"def", b"ghi"])
    assert ResumableUploads(exact).partial_head("m1", 6) == b"abcdef" and exact.served == 2


def test_a_partial_shorter_than_the_size_is_read_whole():
    chunks = Chunks([b"ab", b"c"])
    assert ResumableUploads(chunks).partial_head("m1", 100) == b"abc"
    assert chunks.served == 2
