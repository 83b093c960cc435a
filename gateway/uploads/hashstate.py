"""A SHA-256 whose state survives between requests: the record carries it from one tus PATCH to
the next (and across gateway restarts and nodes), so an upload sent in any number of requests
is stored with the SHA-256 of exactly its bytes, hashed once, as they arrive.

``hashlib`` cannot export its state, so this drives the same OpenSSL library through its public
``SHA256_Init``/``SHA256_Update``/``SHA256_Final`` functions and keeps the ``SHA256_CTX`` (a plain
112-byte struct declared in ``openssl/sha.h``, unchanged from OpenSSL 1.0 to 3.x: eight hash
words, the bit count, the unhashed tail of at most one block, its length). Those functions are
marked deprecated in OpenSSL 3 but are still exported by every build that keeps the deprecated
API, Debian's included; ``available()`` says whether this one does, and a gateway that cannot
load them leaves the SHA-256 of a many-request upload to processing (the record says so).

The state is saved as text: a format tag, the byte order of the machine that wrote it (the
struct's words are native), and the struct in base64. A state from another format or byte order
is refused (``ValueError``), never misread.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import hashlib
import logging
import sys
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import _Hash

log = logging.getLogger(__name__)

CTX_SIZE = 112  # 8 + 2 + 16 + 2 words of 4 bytes
FORMAT = f"openssl-sha256-ctx:1:{sys.byteorder}"  # then ":" and the struct in base64


class _Ctx(ctypes.Structure):
    _fields_ = [("raw", ctypes.c_ubyte * CTX_SIZE)]


@cache
def _libcrypto() -> ctypes.CDLL | None:
    names = [ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so.1.1"]
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            for fn in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
                fn.restype = ctypes.c_int
        except (OSError, AttributeError):
            continue
        lib.SHA256_Init.argtypes = [ctypes.POINTER(_Ctx)]
        lib.SHA256_Update.argtypes = [ctypes.POINTER(_Ctx), ctypes.c_void_p, ctypes.c_size_t]
        lib.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Ctx)]
        return lib
    return None


def available() -> bool:
    return _libcrypto() is not None


class ResumableSha256:
    """``update`` and ``hexdigest`` as ``hashlib.sha256``; ``state()`` to save, ``resume`` to go
    on from a saved state."""

    def __init__(self) -> None:
        lib = _libcrypto()
        if lib is None:
            raise RuntimeError("OpenSSL's SHA256_* functions are not available")
        self._lib = lib
        self._ctx = _Ctx()
        if lib.SHA256_Init(ctypes.byref(self._ctx)) != 1:
            raise RuntimeError("SHA256_Init failed")

    @classmethod
    def resume(cls, state: str) -> ResumableSha256:
        tag, _, encoded = state.rpartition(":")
        if tag != FORMAT:
            raise ValueError(f"not a SHA-256 state of this format and byte order: {tag!r}")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError("a SHA-256 state that is not base64") from None
        if len(raw) != CTX_SIZE:
            raise ValueError(f"a SHA-256 state of {len(raw)} bytes, not {CTX_SIZE}")
        hasher = cls()
        ctypes.memmove(ctypes.byref(hasher._ctx), raw, CTX_SIZE)
        return hasher

    def update(self, data: bytes | bytearray | memoryview) -> None:
        # No ctypes.cast() and no array type per size: each leaves reference cycles, and a
        # chunk hashed through cast() stayed in memory until the garbage collector ran.
        if isinstance(data, bytes):
            self._update(data, len(data))  # c_void_p takes bytes as a pointer to them
            return
        with memoryview(data).cast("B") as view:
            if view.readonly:
                self.update(view.tobytes())
                return
            if not view.nbytes:
                return
            first = ctypes.c_char.from_buffer(view)  # the buffer's first byte, in place
            try:
                self._update(ctypes.byref(first), view.nbytes)
            finally:
                del first  # the buffer export ends before the view is released

    def _update(self, pointer: object, size: int) -> None:
        if size and self._lib.SHA256_Update(ctypes.byref(self._ctx), pointer, size) != 1:
            raise RuntimeError("SHA256_Update failed")

    def state(self) -> str:
        raw = ctypes.string_at(ctypes.byref(self._ctx), CTX_SIZE)
        return f"{FORMAT}:{base64.b64encode(raw).decode()}"

    def hexdigest(self) -> str:
        """The digest of what was hashed so far (the hasher itself goes on unchanged)."""
        ctx = _Ctx()
        ctypes.memmove(ctypes.byref(ctx), ctypes.byref(self._ctx), CTX_SIZE)
        out = ctypes.create_string_buffer(32)
        if self._lib.SHA256_Final(out, ctypes.byref(ctx)) != 1:
            raise RuntimeError("SHA256_Final failed")
        return out.raw.hex()


def hasher_at(offset: int, state: str) -> ResumableSha256 | _Hash | None:
    """What hashes an upload's bytes on from ``offset``: the saved ``state`` resumed (any number
    of requests); without OpenSSL's exportable state, hashlib when the upload starts there (one
    request); else None (processing computes the SHA-256)."""
    if offset == 0:
        return ResumableSha256() if available() else hashlib.sha256()
    if state and available():
        try:
            return ResumableSha256.resume(state)
        except ValueError:
            log.warning("a tus upload's SHA-256 state cannot be read here; processing will hash it")
    return None


def saved_state(hasher: ResumableSha256 | _Hash | None) -> str:
    """What to save for the next request to resume from ("": it cannot resume)."""
    return hasher.state() if isinstance(hasher, ResumableSha256) else ""
