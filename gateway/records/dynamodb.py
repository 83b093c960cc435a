"""DynamoDB record store (production).

One table, partition key ``pk``. Media items: ``pk = media#<id>``, ``status`` and ``version``;
visible ones (``lifecycle.VISIBLE``) also carry ``scope = <tenant>#<project>`` and
``sk = <createdAt>#<id>`` (the sparse ``by_scope`` index lists a project's media); pending uploads
carry ``pendingShard`` and ``expiresAt`` (the sparse ``pending_by_expiry`` index feeds the
sweeper) and ``pendingOwner = <tenant>#<owner>`` (the sparse ``pending_by_owner`` index counts a
caller's pending uploads). Idempotency items: ``pk = idem#<hash of scope and key>``, expired by
DynamoDB's TTL on ``ttl``. Every write is conditional, so nothing is ever overwritten by accident.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .. import errors
from ..lifecycle import VISIBLE, Status
from . import (
    IdempotentAnswer,
    MediaRecord,
    Page,
    SavedResponse,
    checked_update,
    decode_cursor,
    encode_cursor,
)

if TYPE_CHECKING:
    from ..config import Settings

INDEX = "by_scope"
PENDING_INDEX = "pending_by_expiry"
PENDING_OWNER_INDEX = "pending_by_owner"
STORED_INDEX = "stored_by_time"
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


class DynamoRecordStore:
    def __init__(self, client: Any, *, table: str) -> None:
        self.client = client
        self.table = table

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
                    )
                ],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                GlobalSecondaryIndexes=[
                    index(INDEX, "scope", "sk"),
                    index(PENDING_INDEX, "pendingShard", "expiresAt"),
                    index(PENDING_OWNER_INDEX, "pendingOwner"),
                    index(STORED_INDEX, "storedShard", "createdAt"),
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

    def create_many(
        self, records: Sequence[MediaRecord], *, answer: IdempotentAnswer | None = None
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
        if answer is not None:
            items.append({"Update": self._answer_update(answer)})
        try:
            if len(items) == 1 and "Put" in items[0]:
                self.client.put_item(**items[0]["Put"])
            else:
                self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if code == "ConditionalCheckFailedException" or "ConditionalCheckFailed" in reasons:
                raise errors.RecordExists() from exc
            raise errors.RecordStoreError() from exc
        except BotoCoreError as exc:
            raise errors.RecordStoreError() from exc

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
        self._call(
            self.client.delete_item, TableName=self.table, Key=_item({"pk": f"media#{media_id}"})
        )

    def update(self, record: MediaRecord, *, expected: MediaRecord) -> MediaRecord | None:
        new = checked_update(expected, record)
        written = self._conditional(
            self.client.put_item,
            TableName=self.table,
            Item=self._media_item(new),
            ConditionExpression="version = :expected",
            ExpressionAttributeValues=_item({":expected": expected.version}),
        )
        return new if written else None

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
