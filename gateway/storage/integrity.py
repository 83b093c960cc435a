"""That an S3 object holds exactly the bytes the gateway sent, on any S3: the checksums each
write carries, the check of what the store answers, and what ``flask check`` concludes from a
probe of the store. No I/O here (gateway/storage/s3.py and s3_check.py do it).

Stores differ (measured, docs/design.md "What each store verifies"): AWS S3 refuses a body whose
``Content-MD5`` or ``x-amz-checksum-crc32c`` does not match it (400 BadDigest); Ceph RGW 16
refuses a wrong ``Content-MD5`` but stores a wrong CRC32C; moto refuses neither. What every one
of them answers is an ETag, which for a PutObject or an UploadPart is the MD5 of the bytes it
stored (not on AWS with SSE-KMS or SSE-C encryption). Hence the modes of
``GATEWAY_S3_INTEGRITY``:

- ``md5``: every PutObject and UploadPart carries ``Content-MD5`` (a store that
  verifies it refuses the body) and the ETag answered must be that MD5 (a store that verifies
  nothing is caught after the fact). Costs MD5 over every byte: 1.43 CPU s/GiB here.
- ``crc32c``: only ``x-amz-checksum-crc32c`` (0.04 CPU s/GiB), for a store that verifies it
  (AWS S3, also where its ETags are not MD5s); the ETag is not looked at.
- ``auto`` (the default): ``crc32c`` on AWS S3 itself, ``md5`` on any other endpoint
  (``Settings.effective_s3_integrity``). Measured, ``md5`` adds 1.5-1.7 CPU s/GiB to the form
  path (docs/benchmarks.md): not worth paying where the store checks the CRC32C itself.

Both send the CRC32C with every UploadPart (AWS keeps them as the object's checksum); a single
PutObject of the form path carries the file's SHA-256 instead (S3 takes one such header)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from crc32c import crc32c

MD5 = "md5"
CRC32C = "crc32c"
MODES = (MD5, CRC32C)

# S3's codes for a body that does not match the checksum sent with it (AWS, Ceph: BadDigest;
# a SigV4-signed payload: XAmzContentSHA256Mismatch).
DIGEST_ERRORS = frozenset({"BadDigest", "XAmzContentSHA256Mismatch"})


@dataclass(frozen=True)
class Sums:
    """What one body's request carries, and what its answer must say."""

    headers: dict[str, str]
    md5: str  # hex; "" in crc32c mode: the ETag is not checked

    @property
    def crc32c(self) -> str:
        return self.headers["x-amz-checksum-crc32c"]


def sums(data: bytes | bytearray | memoryview, mode: str, *, with_crc32c: bool = True) -> Sums:
    """The checksum headers of a PutObject or UploadPart body: its CRC32C (the CPU's own
    instruction) unless the request carries another ``x-amz-checksum-*`` (S3 takes one), and
    in ``md5`` mode its Content-MD5 (the one that costs)."""
    return sums_of(
        crc32c(data) if with_crc32c else None,
        hashlib.md5(data, usedforsecurity=False).digest() if mode == MD5 else None,
    )


def sums_of(crc: int | None, md5: bytes | None) -> Sums:
    """The ``Sums`` of checksums computed already (a staged part's, as its bytes arrived):
    ``crc`` None leaves the CRC32C out, ``md5`` None the Content-MD5 (``crc32c`` mode)."""
    headers = {}
    if crc is not None:
        headers["x-amz-checksum-crc32c"] = base64.b64encode(crc.to_bytes(4, "big")).decode()
    if md5 is None:
        return Sums(headers, "")
    headers["Content-MD5"] = base64.b64encode(md5).decode()
    return Sums(headers, md5.hex())


def etag_holds(etag: str, sums: Sums) -> bool:
    """Whether the store's ETag for a body says it stored the bytes sent (always, when the
    mode does not check ETags)."""
    return not sums.md5 or etag.strip().strip('"').lower() == sums.md5


# -- flask check ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """What a probe of an S3 store found (gateway/storage/s3_check.py)."""

    verifies_md5: bool  # a PutObject with a wrong Content-MD5 was refused
    verifies_crc32c: bool  # a PutObject with a wrong x-amz-checksum-crc32c was refused
    etag_is_md5: bool  # the ETag of a PutObject was the MD5 of its bytes
    addressing: str  # "path-style" or "virtual-hosted"
    bucket_url: str
    cors: tuple[str, ...] | None  # one line per CORS rule; None: no CORS configuration
    notifications: tuple[str, ...]  # one line per notification configuration


def holds(probe: Probe, mode: str) -> bool:
    """Whether the configured mode keeps every stored object exactly the bytes sent, and lets
    uploads through: ``md5`` compares ETags, so it needs them to be MD5s; ``crc32c`` needs a
    store that refuses a wrong CRC32C."""
    return probe.etag_is_md5 if mode == MD5 else probe.verifies_crc32c


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def report(probe: Probe, mode: str, setting: str = "") -> list[str]:
    """``flask check``'s lines, in plain words, the verdict last (``setting``: how the mode was
    set, when not by its own name, e.g. "auto (md5)")."""
    lines = [
        f"addressing: {probe.addressing} ({probe.bucket_url})",
        f"refuses a wrong Content-MD5: {_yes(probe.verifies_md5)}",
        f"refuses a wrong x-amz-checksum-crc32c: {_yes(probe.verifies_crc32c)}",
        f"ETag of a PutObject is the MD5 of its bytes: {_yes(probe.etag_is_md5)}",
    ]
    if probe.cors is None:
        lines.append("CORS: none on the bucket (browsers cannot send direct uploads themselves)")
    else:
        lines += [f"CORS: {rule}" for rule in probe.cors]
    if probe.notifications:
        lines += [f"notifications: {item}" for item in probe.notifications]
    else:
        lines.append("notifications: none configured on the bucket")
    if not (probe.verifies_md5 or probe.verifies_crc32c):
        lines.append("the store verifies no checksum it is sent")
    lines.append(f"GATEWAY_S3_INTEGRITY={setting or mode}: " + _verdict(probe, mode))
    return lines


def _verdict(probe: Probe, mode: str) -> str:
    if mode == MD5 and probe.etag_is_md5:
        how = (
            "the store refuses a body whose Content-MD5 differs, and the gateway compares"
            if probe.verifies_md5
            else "the store refuses nothing; the gateway compares"
        )
        tip = (
            " (the store verifies CRC32C: GATEWAY_S3_INTEGRITY=crc32c would hold too, with"
            " less CPU)"
            if probe.verifies_crc32c
            else ""
        )
        return f"integrity holds: {how} each write's ETag with the MD5 it sent{tip}"
    if mode == MD5:
        return "uploads would FAIL: the ETags are not MD5s, so every write's check refuses it" + (
            "; the store verifies CRC32C: set GATEWAY_S3_INTEGRITY=crc32c"
            if probe.verifies_crc32c
            else ""
        )
    if probe.verifies_crc32c:
        return "integrity holds: the store refuses a body whose CRC32C differs"
    return "integrity is NOT kept: the store stores a body whose CRC32C differs" + (
        "; set GATEWAY_S3_INTEGRITY=md5" if probe.etag_is_md5 else ""
    )


LOCAL_REPORT = (
    "local storage: the gateway writes each file itself and hashes the bytes it writes; no S3"
    " checksum, addressing, CORS or notification applies",
    "integrity holds: a file is renamed into place only once all of it is written",
)
