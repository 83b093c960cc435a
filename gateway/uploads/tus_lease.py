"""A tus request's lease on its upload: the only licence to write the upload's parts and chunks.

Taken by a compare-and-set in the record store (a second request meanwhile gets 423), it lasts
``seconds`` and is renewed in the background every quarter of that while the request runs,
whatever pace the client sends at (a renewal between reads would let a slow client's lease run
out mid-request). Every write to storage first asks ``check()``: the lease must be ours for at
least a third of its length more, so a writer that lost it (its renewals failed, or its process
stood still past the expiry and another request took the upload) touches nothing. Each take
bumps the upload's lease ``generation``: part numbers are drawn from it (``tus.part_number``),
so even a write already under way when its lease ran out lands beside the new holder's parts,
never on them. Every change of the record while the lease is held goes through ``write`` (one
at a time with the renewals: each is a compare-and-set on the record's version).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable

from gateway import errors
from gateway.media.records import MediaRecord, RecordStore, TusUpload, tus_state

log = logging.getLogger(__name__)
RENEWALS_PER_LEASE = 4
MIN_LEFT = 1 / 3  # of the lease's length: what a write needs left


def held(upload: TusUpload, now: float) -> bool:
    """Whether a request holds the upload at ``now`` (until the instant its lease ends)."""
    return bool(upload.lock_token) and upload.lock_until > now


class Lease:
    def __init__(
        self,
        records: RecordStore,
        record: MediaRecord,
        *,
        seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._records = records
        self._record = record
        self.seconds = seconds
        self._clock = clock
        self._mutex = threading.Lock()
        self._stopped = threading.Event()
        self._lost: errors.UploadLocked | None = None
        self._renewer: threading.Thread | None = None

    @classmethod
    def take(
        cls,
        records: RecordStore,
        record: MediaRecord,
        *,
        seconds: float,
        clock: Callable[[], float],
    ) -> Lease:
        """The upload's lease, or UploadLocked while another request holds it."""
        upload = tus_state(record)
        now = clock()
        if held(upload, now):
            raise errors.UploadLocked()
        taken = records.update(
            record.evolve(
                upload=dataclasses.replace(
                    upload,
                    lock_token=uuid.uuid4().hex,
                    lock_until=now + seconds,
                    generation=upload.generation + 1,
                )
            ),
            expected=record,
        )
        if taken is None:
            raise errors.UploadLocked()
        return cls(records, taken, seconds=seconds, clock=clock)

    @property
    def record(self) -> MediaRecord:
        """The record as this lease last wrote it."""
        return self._record

    @property
    def generation(self) -> int:
        return tus_state(self._record).generation

    def start(self) -> None:
        self._renewer = threading.Thread(target=self._keep, name="tus-lease", daemon=True)
        self._renewer.start()

    def _keep(self) -> None:
        while not self._stopped.wait(self.seconds / RENEWALS_PER_LEASE):
            try:
                self.renew()
            except errors.UploadLocked:
                return
            except Exception:
                log.warning("could not renew a tus lease", exc_info=True)

    def renew(self) -> None:
        self.write(
            lambda record: record.evolve(
                upload=dataclasses.replace(
                    tus_state(record), lock_until=self._clock() + self.seconds
                )
            )
        )

    def check(self) -> None:
        """Before every write: UploadLocked unless the lease is surely ours for a while yet."""
        if self._lost is not None:
            raise self._lost
        if tus_state(self._record).lock_until - self._clock() < self.seconds * MIN_LEFT:
            self._lost = errors.UploadLocked("The upload's lease ran out while this request ran.")
            raise self._lost

    def write(
        self, change: Callable[[MediaRecord], MediaRecord], *, last: bool = False
    ) -> MediaRecord:
        """Change the record under the lease (a compare-and-set); UploadLocked if it was taken
        over, and from then on every ``check``. Errors of the store (quota included) pass on.
        ``last``: the change gives the upload back (the lease is cleared from the record in the
        same write); nothing is renewed after it."""
        with self._mutex:
            if self._lost is not None:
                raise self._lost
            if self._stopped.is_set():
                raise errors.UploadLocked("The lease has ended.")
            changed = change(self._record)
            if last:
                free = dataclasses.replace(tus_state(changed), lock_token="", lock_until=0.0)
                changed = changed.evolve(upload=free)
            written = self._records.update(changed, expected=self._record)
            if written is None:
                self._lost = errors.UploadLocked(
                    "The upload was taken over while this request ran."
                )
                raise self._lost
            self._record = written
            if last:
                self._stopped.set()
            return written

    def give_back(self, change: Callable[[MediaRecord], MediaRecord]) -> bool:
        """The last write; False when the upload was taken over or the lease ended meanwhile
        (nothing of ours to give back)."""
        try:
            self.write(change, last=True)
        except errors.UploadLocked:
            return False
        return True

    def stop(self) -> None:
        with self._mutex:
            self._stopped.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()
