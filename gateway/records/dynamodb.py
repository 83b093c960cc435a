"""DynamoDB record store (production).

One table, partition key ``pk``. Media items: ``pk = media#<id>`` and ``status``; stored ones also
carry ``scope = <tenant>#<project>`` and ``sk = <createdAt>#<id>`` (the sparse ``by_scope`` index
lists a project's stored media); pending direct uploads carry ``pendingShard`` and ``expiresAt``
(the sparse ``pending_by_expiry`` index feeds the sweeper).
Idempotency items: ``pk = idem#<scope>#<key>``, expired by DynamoDB's TTL on ``ttl``.
Every write is conditional, so nothing is ever overwritten by accident.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import Conflict, RecordExists, RecordNotFound, RecordStoreError
from . import MediaRecord, Page, SavedResponse, decode_cursor, encode_cursor

INDEX = "by_scope"
PENDING_INDEX = "pending_by_expiry"
_ser, _de = TypeSerializer(), TypeDeserializer()


def make_dynamodb_client(settings) -> Any:
    config = Config(region_name=settings.s3_region,
                    retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
                    connect_timeout=settings.s3_connect_timeout,
                    read_timeout=settings.s3_read_timeout,
                    max_pool_connections=settings.s3_max_pool_connections)
    return boto3.session.Session().client(
        "dynamodb", endpoint_url=settings.dynamodb_endpoint_url or None, config=config)


def _item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in values.items()}


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


def _scope(tenant: str, project_id: str) -> str:
    return f"{tenant}#{project_id}"


class DynamoRecordStore:
    def __init__(self, client: Any, *, table: str) -> None:
        self.client = client
        self.table = table

    def _conditional(self, fn, **kwargs) -> bool:
        """Run a conditional write: False when its condition did not hold."""
        try:
            fn(**kwargs)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise RecordStoreError("The record store failed.") from exc
        except BotoCoreError as exc:
            raise RecordStoreError("The record store is unreachable.") from exc

    def _call(self, fn, **kwargs):
        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise RecordStoreError(f"The record store failed: {code}.") from exc
        except BotoCoreError as exc:
            raise RecordStoreError("The record store is unreachable.") from exc

    def create_schema(self) -> None:
        try:
            self.client.create_table(
                TableName=self.table, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"}
                                      for n in ("pk", "scope", "sk", "pendingShard", "expiresAt")],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                GlobalSecondaryIndexes=[
                    {"IndexName": INDEX,
                     "KeySchema": [{"AttributeName": "scope", "KeyType": "HASH"},
                                   {"AttributeName": "sk", "KeyType": "RANGE"}],
                     "Projection": {"ProjectionType": "ALL"}},
                    {"IndexName": PENDING_INDEX,
                     "KeySchema": [{"AttributeName": "pendingShard", "KeyType": "HASH"},
                                   {"AttributeName": "expiresAt", "KeyType": "RANGE"}],
                     "Projection": {"ProjectionType": "ALL"}}])
            self.client.get_waiter("table_exists").wait(TableName=self.table)
            self.client.update_time_to_live(
                TableName=self.table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":
                raise

    def check(self) -> None:
        self._call(self.client.describe_table, TableName=self.table)

    def _media_item(self, r: MediaRecord) -> dict[str, Any]:
        values = {"pk": f"media#{r.media_id}", "status": r.status, "body": json.dumps(r.to_dict())}
        if r.status == "stored":
            values.update(scope=_scope(r.tenant, r.project_id), sk=f"{r.created_at}#{r.media_id}")
        elif r.status == "pending":
            values.update(pendingShard="pending", expiresAt=r.expires_at)
        return _item(values)

    def create_many(self, records: Sequence[MediaRecord]) -> None:
        items = [{"Put": {
            "TableName": self.table, "Item": self._media_item(r),
            "ConditionExpression": "attribute_not_exists(pk)"}} for r in records]
        try:
            if len(items) == 1:
                self.client.put_item(**items[0]["Put"])
            else:
                self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if code == "ConditionalCheckFailedException" or "ConditionalCheckFailed" in reasons:
                raise RecordExists() from exc
            raise RecordStoreError(f"The record store failed: {code}.") from exc
        except BotoCoreError as exc:
            raise RecordStoreError("The record store is unreachable.") from exc

    def get(self, media_id: str) -> MediaRecord:
        response = self._call(self.client.get_item, TableName=self.table, ConsistentRead=True,
                              Key=_item({"pk": f"media#{media_id}"}))
        if "Item" not in response:
            raise RecordNotFound()
        return MediaRecord.from_dict(json.loads(_plain(response["Item"])["body"]))

    def list(self, *, tenant: str, project_id: str, cursor: str | None, limit: int) -> Page:
        kwargs: dict[str, Any] = {
            "TableName": self.table, "IndexName": INDEX, "ScanIndexForward": False,
            "Limit": limit, "KeyConditionExpression": "#scope = :scope",
            "ExpressionAttributeNames": {"#scope": "scope"},
            "ExpressionAttributeValues": _item({":scope": _scope(tenant, project_id)})}
        if cursor:
            created_at, media_id = decode_cursor(cursor)
            kwargs["ExclusiveStartKey"] = _item({
                "pk": f"media#{media_id}", "scope": _scope(tenant, project_id),
                "sk": f"{created_at}#{media_id}"})
        response = self._call(self.client.query, **kwargs)
        items = [MediaRecord.from_dict(json.loads(_plain(i)["body"])) for i in response["Items"]]
        next_cursor = None
        if "LastEvaluatedKey" in response and items:
            next_cursor = encode_cursor(items[-1].created_at, items[-1].media_id)
        return Page(items, next_cursor)

    def delete(self, media_id: str) -> None:
        self._call(self.client.delete_item, TableName=self.table,
                   Key=_item({"pk": f"media#{media_id}"}))

    def replace(self, record: MediaRecord, *, expected_status: str) -> bool:
        return self._conditional(
            self.client.put_item, TableName=self.table, Item=self._media_item(record),
            ConditionExpression="#status = :expected",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=_item({":expected": expected_status}))

    def expired_pending(self, *, now: str, limit: int) -> list[MediaRecord]:
        response = self._call(
            self.client.query, TableName=self.table, IndexName=PENDING_INDEX, Limit=limit,
            KeyConditionExpression="pendingShard = :shard AND expiresAt < :now",
            ExpressionAttributeValues=_item({":shard": "pending", ":now": now}))
        return [MediaRecord.from_dict(json.loads(_plain(i)["body"])) for i in response["Items"]]

    # -- idempotency -------------------------------------------------------------------------
    @staticmethod
    def _idem_pk(scope: str, key: str) -> str:
        # Both parts may contain "#": hash an unambiguous encoding so callers cannot collide.
        return "idem#" + hashlib.sha256(json.dumps([scope, key]).encode()).hexdigest()

    def claim(self, scope: str, key: str, *, now: float, lock_timeout: float,
              ttl: float) -> SavedResponse | None:
        pk = self._idem_pk(scope, key)
        claimed = self._conditional(
            self.client.put_item, TableName=self.table,
            Item=_item({"pk": pk, "claimedAt": int(now), "ttl": int(now + ttl)}),
            # Free, expired, or an abandoned claim (its request died) may be taken over.
            ConditionExpression="attribute_not_exists(pk) OR #ttl < :now"
                                " OR (attribute_not_exists(#status) AND claimedAt < :stale)",
            ExpressionAttributeNames={"#ttl": "ttl", "#status": "status"},
            ExpressionAttributeValues=_item({":now": int(now), ":stale": int(now - lock_timeout)}))
        if claimed:
            return None
        response = self._call(self.client.get_item, TableName=self.table, ConsistentRead=True,
                              Key=_item({"pk": pk}))
        item = _plain(response.get("Item", {}))
        if "status" in item:
            return SavedResponse(int(item["status"]), json.loads(item["body"]))
        raise Conflict("A request with this Idempotency-Key is still running.",
                       code="idempotency_in_progress")

    def save(self, scope: str, key: str, response: SavedResponse, *, now: float,
             ttl: float) -> None:
        self._call(self.client.update_item, TableName=self.table,
                   Key=_item({"pk": self._idem_pk(scope, key)}),
                   UpdateExpression="SET #status = :status, body = :body, #ttl = :ttl",
                   ExpressionAttributeNames={"#status": "status", "#ttl": "ttl"},
                   ExpressionAttributeValues=_item({":status": response.status,
                                                    ":body": json.dumps(response.body),
                                                    ":ttl": int(now + ttl)}))

    def release(self, scope: str, key: str) -> None:
        self._conditional(self.client.delete_item, TableName=self.table,
                          Key=_item({"pk": self._idem_pk(scope, key)}),
                          ConditionExpression="attribute_not_exists(#status)",
                          ExpressionAttributeNames={"#status": "status"})
