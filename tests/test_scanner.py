"""The clamd client against a real clamd with the tests' own signatures."""

from __future__ import annotations

import pytest
from clamd_harness import EICAR, MARKER, MARKER_SIGNATURE, STREAM_MAX

from gateway.processing.scanner import ClamdScanner, ScanError, Verdict, parse_reply

from support import free_port, png_bytes


def test_a_clean_file_is_clean(clamd_url):
    assert ClamdScanner(clamd_url, timeout=30).scan([png_bytes(300_000)]) == Verdict(clean=True)


@pytest.mark.parametrize("where", [0, 100_000, 299_990])
def test_the_marker_is_found_anywhere_in_the_stream(clamd_url, where):
    data = png_bytes(300_000)
    data = data[:where] + MARKER + data[where:]
    chunks = [data[i : i + 70_001] for i in range(0, len(data), 70_001)]  # markers split too
    verdict = ClamdScanner(clamd_url, timeout=30).scan(chunks)
    assert verdict == Verdict(clean=False, signature=f"{MARKER_SIGNATURE}.UNOFFICIAL")


def test_the_eicar_file_is_found(clamd_url):
    verdict = ClamdScanner(clamd_url, timeout=30).scan([EICAR])
    assert not verdict.clean and verdict.signature.startswith("Gateway.Test.EICAR")


def test_over_the_size_limit_is_an_error_never_clean(clamd_url):
    with pytest.raises(ScanError, match="size limit exceeded"):
        ClamdScanner(clamd_url, timeout=30).scan([b"\0" * (STREAM_MAX + 1024 * 1024)])


def test_ping(clamd_url):
    ClamdScanner(clamd_url, timeout=5).ping()


def test_an_unreachable_scanner_is_an_error():
    scanner = ClamdScanner(f"tcp://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ScanError, match="unreachable"):
        scanner.scan([b"x"])
    with pytest.raises(ScanError):
        scanner.ping()


@pytest.mark.parametrize(
    "reply",
    ["", "stream: ERROR", "INSTREAM size limit exceeded. ERROR", "stream: OK FOUND?", "PONG"],
)
def test_anything_but_ok_or_found_is_no_verdict(reply):
    with pytest.raises(ScanError):
        parse_reply(reply)


@pytest.mark.parametrize("url", ["clamd://x", "tcp://127.0.0.1", "http://x:1", ""])
def test_bad_urls_are_refused(url):
    with pytest.raises(ValueError):
        ClamdScanner(url, timeout=1)
