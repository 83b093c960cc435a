"""DynamoDB record store (production).

One table, partition key ``pk``. Media items: ``pk = media#<id>``, ``status`` and ``version``;
visible ones (``lifecycle.VISIBLE``) also carry ``scope = <tenant>#<project>`` and
``sk = <createdAt>#<id>`` (the sparse ``by_scope`` index lists a project's media); pending uploads
carry ``pendingShard`` and ``expiresAt`` (the sparse ``pending_by_expiry`` index feeds the
sweeper) and ``pendingOwner = <tenant>#<owner>`` (the sparse ``pending_by_owner`` index counts a
caller's pending uploads). Idempotency items: ``pk = idem#<hash of scope and key>``, expired by
DynamoDB's TTL on ``ttl``. Usage counters: ``USAGE_SHARDS`` items per project,
``pk = usage#<tenant>#<project>#<shard>``, numbers ``n <type> <status>`` (files) and
``b <type> <status>`` (bytes), changed with ``ADD`` in the same transaction as the media item on
a random shard (one hot item would make concurrent uploads of a project conflict), summed on
read. Every write is conditional, so nothing is ever
overwritten by accident.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway import errors
from gateway.media.lifecycle import VISIBLE, Status
from gateway.media.records import (
    IdempotentAnswer,
    MediaRecord,
    Page,
    SavedResponse,
    UsageCount,
    UsageDeltas,
    checked_update,
    decode_cursor,
    encode_cursor,
    held_of,
    merge_deltas,
    usage_deltas,
)
from gateway.media.records.quota import HELD, Held, QuotaLimits

if TYPE_CHECKING:
    from gateway.config import Settings

INDEX = "by_scope"
PENDING_INDEX = "pending_by_expiry"
PENDING_OWNER_INDEX = "pending_by_owner"
STORED_INDEX = "stored_by_time"
RESERVATION_INDEX = "reservations_by_expiry"
_ser, _de = TypeSerializer(), TypeDeserializer()


def make_dynamodb_client(settings: Settings) -> Any:
    config = Config(
        region_name=settings.s3_region,
        retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        max_pool_connections=settings.s3_max_pool_connections,
    )
    return boto3.session.Session().client(
        "dynamodb", endpoint_url=settings.dynamodb_endpoint_url or None, config=config
    )


def _item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in values.items()}


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


def _scope(tenant: str, project_id: str) -> str:
    return f"{tenant}#{project_id}"


def _record(item: dict[str, Any]) -> MediaRecord:
    return MediaRecord.from_dict(json.loads(_plain(item)["body"]))


USAGE_SHARDS = 8
TRANSACTION_ATTEMPTS = 4
RECOUNT_ATTEMPTS = 20  # a busy project's ledger may change between a snapshot and its write


def _held_by_counters(usage_items: list[dict[str, Any]]) -> Held:
    """What a project's usage counter items (all shards) count in ``HELD`` statuses."""
    held = Held()
    for item in usage_items:
        for name, value in item.items():
            kind, _, rest = name.partition(" ")
            if kind in ("n", "b") and Status(rest.rsplit(" ", 1)[1]) in HELD:
                held += Held(int(value), 0) if kind == "n" else Held(0, int(value))
    return held


PROJECT_LEDGER = "quota#p#"
TENANT_LEDGER = "quota#t#"


def _project_ledger_pk(tenant: str, project_id: str) -> str:
    return PROJECT_LEDGER + _scope(tenant, project_id)


def _usage_pk(tenant: str, project_id: str, shard: int) -> str:
    return f"usage#{_scope(tenant, project_id)}#{shard}"


def _cancellation_reasons(exc: ClientError) -> list[str]:
    return [r.get("Code", "") for r in exc.response.get("CancellationReasons", [])]


def _cancelled_by_condition(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return code == "ConditionalCheckFailedException" or (
        "ConditionalCheckFailed" in _cancellation_reasons(exc)
    )


def _conflicted(exc: ClientError) -> bool:
    """Another transaction held one of the items: worth another try."""
    code = exc.response.get("Error", {}).get("Code", "")
    return code == "TransactionConflictException" or (
        "TransactionConflict" in _cancellation_reasons(exc)
    )


class DynamoRecordStore:
    def __init__(self, client: Any, *, table: str, limits: QuotaLimits = QuotaLimits()) -> None:
        self.client = client
        self.table = table
        self.limits = limits

    def _conditional(self, fn: Callable[..., Any], **kwargs: Any) -> bool:
        """Run a conditional write: False when its condition did not hold."""
        try:
            fn(**kwargs)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise errors.RecordStoreError() from exc
        except BotoCoreError as exc:
            raise errors.RecordStoreError() from exc

    def _call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise errors.RecordStoreError() from exc  # the cause is logged, never sent

    def create_schema(self) -> None:
        def index(name: str, hash_key: str, range_key: str | None = None) -> dict[str, Any]:
            schema = [{"AttributeName": hash_key, "KeyType": "HASH"}]
            if range_key:
                schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
            return {"IndexName": name, "KeySchema": schema, "Projection": {"ProjectionType": "ALL"}}

        try:
            self.client.create_table(
                TableName=self.table,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[
                    {"AttributeName": n, "AttributeType": "S"}
                    for n in (
                        "pk",
                        "scope",
                        "sk",
                        "pendingShard",
                        "expiresAt",
                        "pendingOwner",
                        "storedShard",
                        "createdAt",
                        "reservationShard",
                        "reservationExpires",
                    )
                ],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                GlobalSecondaryIndexes=[
                    index(INDEX, "scope", "sk"),
                    index(PENDING_INDEX, "pendingShard", "expiresAt"),
                    index(PENDING_OWNER_INDEX, "pendingOwner"),
                    index(STORED_INDEX, "storedShard", "createdAt"),
                    index(RESERVATION_INDEX, "reservationShard", "reservationExpires"),
                ],
            )
            self.client.get_waiter("table_exists").wait(TableName=self.table)
            self.client.update_time_to_live(
                TableName=self.table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":
                raise errors.RecordStoreError() from exc
        except BotoCoreError as exc:
            raise errors.RecordStoreError() from exc

    def check(self) -> None:
        self._call(self.client.describe_table, TableName=self.table)

    def _media_item(self, r: MediaRecord) -> dict[str, Any]:
        values: dict[str, Any] = {
            "pk": f"media#{r.media_id}",
            "status": r.status.value,
            "version": r.version,
            "body": json.dumps(r.to_dict()),
        }
        if r.status in VISIBLE:
            values.update(scope=_scope(r.tenant, r.project_id), sk=f"{r.created_at}#{r.media_id}")
        if r.status is Status.STORED:
            values.update(storedShard="stored", createdAt=r.created_at)
        elif r.status is Status.PENDING:
            values.update(
                pendingShard="pending", expiresAt=r.expires_at, pendingOwner=f"{r.tenant}#{r.owner}"
            )
        return _item(values)

    @staticmethod
    def _idem_pk(scope: str, key: str) -> str:
        # Both parts may contain "#": hash an unambiguous encoding so callers cannot collide.
        return "idem#" + hashlib.sha256(json.dumps([scope, key]).encode()).hexdigest()

    def _answer_update(self, answer: IdempotentAnswer) -> dict[str, Any]:
        response = answer.response
        return {
            "TableName": self.table,
            "Key": _item({"pk": self._idem_pk(answer.scope, answer.key)}),
            "UpdateExpression": (
                "SET #status = :status, body = :body, fingerprint = :fp, #ttl = :ttl"
            ),
            "ExpressionAttributeNames": {"#status": "status", "#ttl": "ttl"},
            "ExpressionAttributeValues": _item(
                {
                    ":status": response.status,
                    ":body": json.dumps(response.body),
                    ":fp": response.fingerprint,
                    ":ttl": int(answer.expires_at),
                }
            ),
        }

    def _usage_update(self, tenant: str, project_id: str, deltas: UsageDeltas) -> dict[str, Any]:
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        adds = []
        for n, ((file_type, status), (files, size)) in enumerate(sorted(deltas.items())):
            names[f"#n{n}"], names[f"#b{n}"] = f"n {file_type} {status}", f"b {file_type} {status}"
            values[f":n{n}"], values[f":b{n}"] = files, size
            adds.append(f"#n{n} :n{n}, #b{n} :b{n}")
        return {
            "Update": {
                "TableName": self.table,
                "Key": _item(
                    {"pk": _usage_pk(tenant, project_id, random.randrange(USAGE_SHARDS))}  # noqa: S311
                ),
                "UpdateExpression": "ADD " + ", ".join(adds),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": _item(values),
            }
        }

    def _transact(self, items: list[dict[str, Any]]) -> list[str] | None:
        """One TransactWriteItems: None when it committed, else the cancellation reason of each
        item ("ConditionalCheckFailed" where a condition did not hold). (Within one call,
        botocore's own retries keep its ClientRequestToken, so a commit whose answer was lost
        is not done twice.)"""
        try:
            self._retrying_conflicts(self.client.transact_write_items, TransactItems=items)
            return None
        except ClientError as exc:
            if _cancelled_by_condition(exc):
                return _cancellation_reasons(exc) or ["ConditionalCheckFailed"]
            raise errors.RecordStoreError() from exc
        except BotoCoreError as exc:
            raise errors.RecordStoreError() from exc

    @staticmethod
    def _retrying_conflicts(fn: Callable[..., Any], **kwargs: Any) -> Any:
        """A transaction call, tried again after a short random pause when it conflicted with
        another transaction on one of its items (botocore does not retry that; a cancelled
        transaction did nothing)."""
        for attempt in range(TRANSACTION_ATTEMPTS):
            try:
                return fn(**kwargs)
            except ClientError as exc:
                retry = _conflicted(exc) and not _cancelled_by_condition(exc)
                if not retry or attempt == TRANSACTION_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0, 0.02 * 2**attempt))  # noqa: S311 (jitter)
        raise AssertionError("unreachable")

    # -- quotas (only with limits: the ledger items are what a condition can check) ------------
    def _ledger_updates(
        self,
        changes: dict[tuple[str, str], Held],
        moved: tuple[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """ADD each (tenant, project) change to its project's ledger item and, summed, to its
        tenant's; where one grows, only if it stays within the limit (QuotaExceeded at once if
        the change alone is over it). ``moved``: a project whose reservation this write turns
        into counters: its ledger is written (its revision bumped) even if no sum changes, as
        the recount must see that (a move between counters alone it sees in its snapshot)."""
        if not self.limits.active:
            return []
        limits = self.limits
        tenants: dict[str, Held] = {}
        for (tenant, _), change in changes.items():
            tenants[tenant] = tenants.get(tenant, Held()) + change
        targets = [
            (_project_ledger_pk(*scope), change, limits.project_files, limits.project_bytes)
            for scope, change in changes.items()
        ] + [
            (TENANT_LEDGER + tenant, change, limits.tenant_files, limits.tenant_bytes)
            for tenant, change in tenants.items()
        ]
        moved_pk = _project_ledger_pk(*moved) if moved else None
        updates = []
        for pk, change, max_files, max_bytes in targets:
            if change.files == 0 and change.bytes == 0 and pk != moved_pk:
                continue
            values: dict[str, Any] = {}
            conditions = []
            if max_files and change.files > 0:
                if change.files > max_files:
                    raise errors.QuotaExceeded(f"At most {max_files} files may be held.")
                conditions.append("(attribute_not_exists(files) OR files <= :mf)")
                values[":mf"] = max_files - change.files
            if max_bytes and change.bytes > 0:
                if change.bytes > max_bytes:
                    raise errors.QuotaExceeded(f"At most {max_bytes} bytes may be held.")
                conditions.append("(attribute_not_exists(#b) OR #b <= :mb)")
                values[":mb"] = max_bytes - change.bytes
            updates.append(self._ledger_add(pk, change, " AND ".join(conditions), values))
        return updates

    def _ledger_add(
        self, pk: str, change: Held, condition: str = "", values: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """ADD ``change`` to a ledger item, if ``condition`` (on ``values``) holds. A project's
        ledger also counts the write in its ``revision``: what a recount's condition checks,
        since the sums alone cannot show a write that moves nothing in sum."""
        adds, values = (
            "ADD files :f, #b :b",
            {":f": change.files, ":b": change.bytes, **(values or {})},
        )
        if pk.startswith(PROJECT_LEDGER):
            adds, values[":one"] = adds + ", revision :one", 1
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": _item({"pk": pk}),
            "UpdateExpression": adds,
            "ExpressionAttributeNames": {"#b": "bytes"},
            "ExpressionAttributeValues": _item(values),
        }
        if condition:
            update["ConditionExpression"] = condition
        return {"Update": update}

    @staticmethod
    def _quota_refused(reasons: list[str], first_ledger: int) -> bool:
        return any(r == "ConditionalCheckFailed" for r in reasons[first_ledger:])

    def _reservation(self, reservation: str) -> tuple[tuple[str, str], Held] | None:
        """The reservation's (tenant, project) and what it holds; None once it has ended."""
        response = self._call(
            self.client.get_item,
            TableName=self.table,
            ConsistentRead=True,
            Key=_item({"pk": f"reservation#{reservation}"}),
        )
        if "Item" not in response:
            return None
        item = _plain(response["Item"])
        return (item["tenant"], item["projectId"]), Held(int(item["files"]), int(item["bytes"]))

    def reserve(
        self, reservation: str, *, tenant: str, project_id: str, files: int, bytes: int,
        expires_at: float,
    ) -> None:  # fmt: skip
        if not self.limits.active:
            return
        add = {
            "Update": {
                "TableName": self.table,
                "Key": _item({"pk": f"reservation#{reservation}"}),
                "UpdateExpression": "ADD files :f, #b :b SET tenant = :t, projectId = :p,"
                " reservedUntil = :e, reservationShard = :shard, reservationExpires = :es",
                "ExpressionAttributeNames": {"#b": "bytes"},
                "ExpressionAttributeValues": _item(
                    {":f": files, ":b": bytes, ":t": tenant, ":p": project_id,
                     ":e": Decimal(str(expires_at)), ":shard": "r", ":es": f"{expires_at:020.6f}"}
                ),
            }
        }  # fmt: skip
        renewal = not (files or bytes)  # only reservedUntil moves: nothing held changes
        ledger = [] if renewal else self._ledger_updates({(tenant, project_id): Held(files, bytes)})
        reasons = self._transact([add, *ledger])
        if reasons is not None:
            raise errors.QuotaExceeded()

    def end_reservation(self, reservation: str) -> None:
        if not self.limits.active:
            return
        while True:
            held = self._reservation(reservation)
            if held is None:
                return
            scope, reserved = held
            delete = self._reservation_delete(reservation, reserved)
            ledger = self._ledger_updates({scope: -reserved})
            if self._transact([delete, *ledger]) is None:
                return

    def end_expired_reservations(self, *, now: float, limit: int) -> int:
        if not self.limits.active:
            return 0
        response = self._call(
            self.client.query,
            TableName=self.table,
            IndexName=RESERVATION_INDEX,
            Limit=limit,
            KeyConditionExpression="reservationShard = :shard AND reservationExpires <= :now",
            ExpressionAttributeValues=_item({":shard": "r", ":now": f"{now:020.6f}"}),
        )
        ended = 0
        for item in response["Items"]:
            self.end_reservation(_plain(item)["pk"].removeprefix("reservation#"))
            ended += 1
        return ended

    # -- recounting the ledgers (quotas turned on for a table that already holds records) --------
    def recount_ledgers(self) -> list[tuple[str, str, Held]]:
        """Set every project's ledger item to what it holds (its usage counters in ``HELD``
        statuses plus its live reservations) and move its tenant's item by the same correction;
        answers each (tenant, project, held).

        Uploads may go on meanwhile. In rounds: a consistent snapshot of each project's ledger
        and counters (one TransactGetItems each), then one strongly consistent read of every
        reservation (a scan: the reservations' index is only eventually consistent), then each
        project's write, only if its ledger's revision is still the snapshot's. Every write to
        a project's ledger bumps that revision in the same transaction, and a commit that turns
        a reservation into counters writes it even when no sum changes, so a project written
        meanwhile is read again next round. Writes of a gateway running without quotas change
        no ledger: recount once every gateway has them."""
        if not self.limits.active:
            return []
        pending = sorted(self._ledger_scopes())
        recounted: dict[tuple[str, str], Held] = {}
        for attempt in range(RECOUNT_ATTEMPTS):
            snapshots = {scope: self._ledger_snapshot(scope) for scope in pending}
            reserved = self._reserved_by_scope()  # after every snapshot of this round
            for scope, snapshot in snapshots.items():
                if snapshot is None:
                    continue  # its snapshot kept conflicting with writes: next round
                ledger, counted = snapshot
                held = counted + reserved.get(scope, Held())
                if self._write_recount(scope, ledger, held):
                    recounted[scope] = held
            pending = [scope for scope in pending if scope not in recounted]
            if not pending:
                return [(*scope, held) for scope, held in sorted(recounted.items())]
            time.sleep(random.uniform(0, min(1.0, 0.05 * 2**attempt)))  # noqa: S311 (jitter)
        raise errors.RecordStoreError()

    def _ledger_scopes(self) -> set[tuple[str, str]]:
        """Every (tenant, project) with usage counters, a ledger item or a reservation."""
        scopes: set[tuple[str, str]] = set()
        for item in self._consistent_scan(
            FilterExpression="begins_with(pk, :u) OR begins_with(pk, :q) OR begins_with(pk, :r)",
            ExpressionAttributeValues=_item(
                {":u": "usage#", ":q": PROJECT_LEDGER, ":r": "reservation#"}
            ),
            ProjectionExpression="pk, tenant, projectId",
        ):
            pk = item["pk"]
            if pk.startswith("usage#"):
                tenant, project_id, _ = pk.removeprefix("usage#").rsplit("#", 2)
            elif pk.startswith(PROJECT_LEDGER):
                tenant, project_id = pk.removeprefix(PROJECT_LEDGER).rsplit("#", 1)
            else:
                tenant, project_id = item["tenant"], item["projectId"]
            scopes.add((tenant, project_id))
        return scopes

    def _consistent_scan(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("scan").paginate(
            TableName=self.table, ConsistentRead=True, **kwargs
        )
        try:
            for page in pages:
                yield from map(_plain, page["Items"])
        except (ClientError, BotoCoreError) as exc:
            raise errors.RecordStoreError() from exc

    def _ledger_snapshot(self, scope: tuple[str, str]) -> tuple[dict[str, Any] | None, Held] | None:
        """The project's ledger item (None: none yet) and what its counters hold, as of one
        instant; None if the read kept conflicting with write transactions."""
        tenant, project_id = scope
        keys = [_item({"pk": _project_ledger_pk(tenant, project_id)})] + [
            _item({"pk": _usage_pk(tenant, project_id, s)}) for s in range(USAGE_SHARDS)
        ]
        try:
            snapshot = self._retrying_conflicts(
                self.client.transact_get_items,
                TransactItems=[{"Get": {"TableName": self.table, "Key": k}} for k in keys],
            )["Responses"]
        except ClientError as exc:
            if _conflicted(exc):
                return None
            raise errors.RecordStoreError() from exc
        except BotoCoreError as exc:
            raise errors.RecordStoreError() from exc
        items = [_plain(r["Item"]) if "Item" in r else None for r in snapshot]
        return items[0], _held_by_counters([i for i in items[1:] if i is not None])

    def _reserved_by_scope(self) -> dict[tuple[str, str], Held]:
        """What the live reservations hold, per (tenant, project)."""
        reserved: dict[tuple[str, str], Held] = {}
        for item in self._consistent_scan(
            FilterExpression="begins_with(pk, :r)",
            ExpressionAttributeValues=_item({":r": "reservation#"}),
        ):
            scope = (item["tenant"], item["projectId"])
            reserved[scope] = reserved.get(scope, Held()) + Held(
                int(item["files"]), int(item["bytes"])
            )
        return reserved

    def _write_recount(
        self, scope: tuple[str, str], ledger: dict[str, Any] | None, held: Held
    ) -> bool:
        """Set the project's ledger to ``held`` and move its tenant's by the correction, if the
        ledger is still as snapshot (False: it was written meanwhile)."""
        tenant, project_id = scope
        values: dict[str, Any] = {":f": held.files, ":b": held.bytes}
        put: dict[str, Any] = {
            "TableName": self.table,
            "Key": _item({"pk": _project_ledger_pk(tenant, project_id)}),
            "UpdateExpression": "SET files = :f, #b = :b",
            "ExpressionAttributeNames": {"#b": "bytes"},
        }
        before = Held()
        if ledger is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            before = Held(int(ledger["files"]), int(ledger["bytes"]))
            values.update({":f0": before.files, ":b0": before.bytes})
            revision = "attribute_not_exists(revision)"  # written before ledgers had revisions
            if "revision" in ledger:
                revision, values[":r0"] = "revision = :r0", int(ledger["revision"])
            put["ConditionExpression"] = f"{revision} AND files = :f0 AND #b = :b0"
        put["ExpressionAttributeValues"] = _item(values)
        writes: list[dict[str, Any]] = [{"Update": put}]
        correction = held + -before
        if correction.files or correction.bytes:
            writes.append(self._ledger_add(TENANT_LEDGER + tenant, correction))
        return self._transact(writes) is None

    # -- records -------------------------------------------------------------------------------
    def create_many(
        self,
        records: Sequence[MediaRecord],
        *,
        answer: IdempotentAnswer | None = None,
        reservation: str | None = None,
        replacing: Sequence[MediaRecord] = (),
    ) -> None:
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": self._media_item(r),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
            for r in records
        ]
        replaced_at = len(items)
        items += [
            {
                "Delete": {
                    "TableName": self.table,
                    "Key": _item({"pk": f"media#{old.media_id}"}),
                    "ConditionExpression": "version = :expected",
                    "ExpressionAttributeValues": _item({":expected": old.version}),
                }
            }
            for old in replacing
        ]
        if answer is not None:
            items.append({"Update": self._answer_update(answer)})
        released_at = len(items)  # where the reservation's delete goes, when there is one
        for _ in range(TRANSACTION_ATTEMPTS):
            held = self._reservation(reservation) if reservation and self.limits.active else None
            writes = list(items)
            if held is not None:
                assert reservation is not None
                writes.append(self._reservation_delete(reservation, held[1]))
            changes: dict[tuple[str, str], Held] = {}
            for (tenant, project_id), deltas in merge_deltas(records, replacing).items():
                writes.append(self._usage_update(tenant, project_id, deltas))
                changes[(tenant, project_id)] = held_of(deltas)
            first_ledger = len(writes)
            moved = None
            if held is not None:
                moved, reserved = held
                changes[moved] = changes.get(moved, Held()) + -reserved
            reasons = self._transact(writes + self._ledger_updates(changes, moved))
            if reasons is None:
                return
            if held is not None and reasons[released_at : released_at + 1] == [
                "ConditionalCheckFailed"
            ]:
                continue  # the reservation changed or ended (the sweeper) since it was read
            if self._quota_refused(reasons, first_ledger):
                raise errors.QuotaExceeded()
            if "ConditionalCheckFailed" in reasons[replaced_at : replaced_at + len(replacing)]:
                raise errors.RecordChanged()
            raise errors.RecordExists()
        raise errors.RecordStoreError()

    def _reservation_delete(self, reservation: str, reserved: Held) -> dict[str, Any]:
        """Delete the reservation, if it still holds what was read (else its release would be
        counted twice)."""
        return {
            "Delete": {
                "TableName": self.table,
                "Key": _item({"pk": f"reservation#{reservation}"}),
                "ConditionExpression": "files = :f AND #b = :b",
                "ExpressionAttributeNames": {"#b": "bytes"},
                "ExpressionAttributeValues": _item({":f": reserved.files, ":b": reserved.bytes}),
            }
        }

    def get(self, media_id: str) -> MediaRecord:
        response = self._call(
            self.client.get_item,
            TableName=self.table,
            ConsistentRead=True,
            Key=_item({"pk": f"media#{media_id}"}),
        )
        if "Item" not in response:
            raise errors.MediaNotFound()
        return _record(response["Item"])

    def list_media(
        self,
        *,
        tenant: str,
        project_id: str,
        cursor: str | None,
        limit: int,
        status: Status | None = None,
    ) -> Page:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": INDEX,
            "ScanIndexForward": False,
            "KeyConditionExpression": "#scope = :scope",
            "ExpressionAttributeNames": {"#scope": "scope"},
            "ExpressionAttributeValues": _item({":scope": _scope(tenant, project_id)}),
        }
        if status is not None:
            kwargs["FilterExpression"] = "#status = :status"
            kwargs["ExpressionAttributeNames"]["#status"] = "status"
            kwargs["ExpressionAttributeValues"].update(_item({":status": status.value}))
        start = decode_cursor(cursor) if cursor else None
        items: list[MediaRecord] = []
        while True:
            if start is not None:
                created_at, media_id = start
                kwargs["ExclusiveStartKey"] = _item(
                    {
                        "pk": f"media#{media_id}",
                        "scope": _scope(tenant, project_id),
                        "sk": f"{created_at}#{media_id}",
                    }
                )
            # One more than asked for tells whether another page exists.
            kwargs["Limit"] = limit + 1 - len(items)
            response = self._call(self.client.query, **kwargs)
            items += [_record(i) for i in response["Items"]]
            last = response.get("LastEvaluatedKey")
            if len(items) > limit or last is None:
                break
            sk = _plain(last)["sk"]
            start = (sk.rsplit("#", 1)[0], sk.rsplit("#", 1)[1])
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            next_cursor = encode_cursor(items[-1].created_at, items[-1].media_id)
        return Page(items, next_cursor)

    def delete(self, media_id: str) -> None:
        while True:  # the record and its counters together; again if it changed meanwhile
            try:
                old = self.get(media_id)
            except errors.MediaNotFound:
                return
            delete = {
                "Delete": {
                    "TableName": self.table,
                    "Key": _item({"pk": f"media#{media_id}"}),
                    "ConditionExpression": "version = :expected",
                    "ExpressionAttributeValues": _item({":expected": old.version}),
                }
            }
            deltas = usage_deltas(old, None)
            usage = self._usage_update(old.tenant, old.project_id, deltas)
            ledger = self._ledger_updates({(old.tenant, old.project_id): held_of(deltas)})
            if self._transact([delete, usage, *ledger]) is None:
                return

    def update(self, record: MediaRecord, *, expected: MediaRecord) -> MediaRecord | None:
        new = checked_update(expected, record)
        put = {
            "TableName": self.table,
            "Item": self._media_item(new),
            "ConditionExpression": "version = :expected",
            "ExpressionAttributeValues": _item({":expected": expected.version}),
        }
        deltas = usage_deltas(expected, new)
        if not deltas:  # most updates (leases, offsets, stages): one conditional put
            return new if self._conditional(self.client.put_item, **put) else None
        usage = self._usage_update(new.tenant, new.project_id, deltas)
        ledger = self._ledger_updates({(new.tenant, new.project_id): held_of(deltas)})
        reasons = self._transact([{"Put": put}, usage, *ledger])
        if reasons is None:
            return new
        if self._quota_refused(reasons, 2):
            raise errors.QuotaExceeded()
        return None

    def usage(self, *, tenant: str, project_id: str) -> list[UsageCount]:
        keys = [_item({"pk": _usage_pk(tenant, project_id, s)}) for s in range(USAGE_SHARDS)]
        request = {self.table: {"Keys": keys, "ConsistentRead": True}}
        totals: dict[str, int] = {}
        while request:
            response = self._call(self.client.batch_get_item, RequestItems=request)
            for item in response["Responses"].get(self.table, []):
                for name, value in _plain(item).items():
                    if name != "pk":
                        totals[name] = totals.get(name, 0) + int(value)
            request = response.get("UnprocessedKeys") or {}
        counts = []
        for name, files in totals.items():
            kind, _, rest = name.partition(" ")
            if kind == "n" and files:
                file_type, status = rest.rsplit(" ", 1)
                counts.append(UsageCount(file_type, Status(status), files, totals["b " + rest]))
        return sorted(counts, key=lambda c: (c.file_type, c.status.value))

    def expired_pending(self, *, now: str, limit: int) -> list[MediaRecord]:
        response = self._call(
            self.client.query,
            TableName=self.table,
            IndexName=PENDING_INDEX,
            Limit=limit,
            KeyConditionExpression="pendingShard = :shard AND expiresAt < :now",
            ExpressionAttributeValues=_item({":shard": "pending", ":now": now}),
        )
        return [_record(i) for i in response["Items"]]

    def stalled(self, *, created_before: str, limit: int) -> list[MediaRecord]:
        response = self._call(
            self.client.query,
            TableName=self.table,
            IndexName=STORED_INDEX,
            Limit=limit,
            KeyConditionExpression="storedShard = :shard AND createdAt < :before",
            ExpressionAttributeValues=_item({":shard": "stored", ":before": created_before}),
        )
        return [_record(i) for i in response["Items"]]

    def count_pending(self, *, tenant: str, owner: str, at_most: int) -> int:
        response = self._call(
            self.client.query,
            TableName=self.table,
            IndexName=PENDING_OWNER_INDEX,
            Select="COUNT",
            Limit=at_most + 1,
            KeyConditionExpression="pendingOwner = :owner",
            ExpressionAttributeValues=_item({":owner": f"{tenant}#{owner}"}),
        )
        return int(response["Count"])

    # -- idempotency -------------------------------------------------------------------------
    def claim(
        self, scope: str, key: str, *, now: float, lock_timeout: float, ttl: float
    ) -> SavedResponse | None:
        pk = self._idem_pk(scope, key)
        claimed = self._conditional(
            self.client.put_item,
            TableName=self.table,
            Item=_item({"pk": pk, "claimedAt": int(now), "ttl": int(now + ttl)}),
            # Free, expired, or an abandoned claim (its request died) may be taken over.
            ConditionExpression="attribute_not_exists(pk) OR #ttl < :now"
            " OR (attribute_not_exists(#status) AND claimedAt < :stale)",
            ExpressionAttributeNames={"#ttl": "ttl", "#status": "status"},
            ExpressionAttributeValues=_item({":now": int(now), ":stale": int(now - lock_timeout)}),
        )
        if claimed:
            return None
        response = self._call(
            self.client.get_item, TableName=self.table, ConsistentRead=True, Key=_item({"pk": pk})
        )
        item = _plain(response.get("Item", {}))
        if "status" in item:
            return SavedResponse(
                int(item["status"]), json.loads(item["body"]), str(item.get("fingerprint", ""))
            )
        raise errors.IdempotencyInProgress()

    def release(self, scope: str, key: str) -> None:
        self._conditional(
            self.client.delete_item,
            TableName=self.table,
            Key=_item({"pk": self._idem_pk(scope, key)}),
            ConditionExpression="attribute_not_exists(#status)",
            ExpressionAttributeNames={"#status": "status"},
        )
