"""The two S3 requests on the upload path (PutObject, UploadPart), sent without botocore's
per-call pipeline but with its parts: its SigV4 signer, its HTTP session, its standard retry
policy and its error parser.

Why: a botocore client call runs parameter validation, serialization, endpoint rules, a user
agent rebuilt per call and some thirty event handlers before it sends anything. For a 1 MiB
upload that was about 0.6 ms of CPU per call, an eighth of the gateway's whole cost per file
(bench (c), docs/benchmarks.md). These two requests carry bytes the gateway already holds and
checksums it already computed, so they need none of that: the request is a URL, a few headers
and the body, signed as botocore signs it. Every other S3 call still goes through the client.

Same behaviour as the client's call: the client's credentials (refreshed as they expire), its
region, addressing and TLS verification, its payload signing choice; retries by botocore's
``standard`` mode rules and backoff, up to the client's ``total_max_attempts``; failures raised
as the client would (``ClientError`` with the parsed S3 error, or botocore's connection errors),
so ``s3.translate`` maps them; the calls are timed and counted in the same metrics.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
    AWSRequest,
    AWSResponse,
)
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.httpsession import URLLib3Session
from botocore.parsers import create_parser
from botocore.retries.standard import (
    ExponentialBackoff,
    RetryContext,
    RetryPolicy,
    StandardRetryConditions,
)
from botocore.utils import check_dns_name, get_environ_proxies, percent_encode

from gateway.metrics import S3_CALL_DURATION, S3_CALL_ERRORS
from gateway.storage.staging import Body, FileBody

# What botocore's HTTP session raises when no answer came (retried as the client retries them).
TRANSPORT_ERRORS = (HTTPClientError, BotoConnectionError)


class S3Requests:
    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        max_attempts: int,
        connect_timeout: float,
        read_timeout: float,
        max_pool_connections: int,
    ) -> None:
        # botocore keeps the credentials its client signs with on the client's signer; taking
        # them from there (not resolving them again) keeps one refreshing set per client.
        self._credentials = client._request_signer._credentials
        self._region = client.meta.region_name
        self._context = {"client_config": client.meta.config}  # its payload-signing choice
        self._model = client.meta.service_model
        self.bucket_url = bucket_url(client, bucket)
        self._http = SendTimeoutSession(
            send_timeout=read_timeout,
            # the client's own TLS verification (AWS_CA_BUNDLE, ca_bundle), not certifi's
            verify=client._endpoint.http_session._verify,
            proxies=get_environ_proxies(self.bucket_url),
            timeout=(connect_timeout, read_timeout),  # as the client's
            max_pool_connections=max_pool_connections,
        )
        self._retry = RetryPolicy(
            StandardRetryConditions(max_attempts=max_attempts), ExponentialBackoff()
        )
        self._parser = create_parser("rest-xml")

    def put_object(self, key: str, body: Body, headers: dict[str, str]) -> str:
        """Its ETag (what gateway/storage/integrity.py checks)."""
        answer = self._send("PutObject", key, "", body, headers)
        return str(answer.headers.get("ETag", ""))

    def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: Body,
        headers: dict[str, str],
    ) -> str:
        query = f"partNumber={number}&uploadId={percent_encode(upload_id)}"
        answer = self._send("UploadPart", key, query, body, headers)
        return str(answer.headers["ETag"])

    def _send(
        self,
        operation: str,
        key: str,
        query: str,
        body: Body,
        headers: dict[str, str],
    ) -> AWSResponse:
        url = f"{self.bucket_url}/{percent_encode(key, safe='/~')}"
        if query:
            url += "?" + query
        started = time.monotonic()
        try:
            answer = self._attempts(operation, url, body, headers)
        except ClientError as exc:
            S3_CALL_DURATION.labels(operation).observe(time.monotonic() - started)
            S3_CALL_ERRORS.labels(operation, exc.response["Error"].get("Code") or "").inc()
            raise
        except TRANSPORT_ERRORS as exc:
            S3_CALL_DURATION.labels(operation).observe(time.monotonic() - started)
            S3_CALL_ERRORS.labels(operation, type(exc).__name__).inc()
            raise
        S3_CALL_DURATION.labels(operation).observe(time.monotonic() - started)
        return answer

    def _attempts(
        self, operation: str, url: str, body: Body, headers: dict[str, str]
    ) -> AWSResponse:
        attempt = 1
        while True:
            # a staged part is streamed from its file, opened again for each attempt
            data = body.open() if isinstance(body, FileBody) else body
            try:
                answer, parsed, failure = self._attempt(url, data, len(body), headers, operation)
            finally:
                if isinstance(body, FileBody):
                    data.close()  # type: ignore[union-attr]
            if answer is not None and answer.status_code < 300:
                return answer
            context = RetryContext(
                attempt_number=attempt,
                operation_model=self._model.operation_model(operation),
                parsed_response=parsed,
                http_response=answer,
                caught_exception=failure,
            )
            if not self._retry.should_retry(context):
                if failure is not None:
                    raise failure
                raise ClientError(parsed or {}, operation)  # type: ignore[arg-type]
            time.sleep(self._retry.compute_retry_delay(context))
            attempt += 1

    def _attempt(
        self, url: str, data: Any, size: int, headers: dict[str, str], operation: str
    ) -> tuple[AWSResponse | None, dict[str, Any] | None, Exception | None]:
        """One attempt: the answer (or None), its parsed error, the transport failure."""
        request = AWSRequest("PUT", url, data=data, headers=dict(headers))
        request.headers["Content-Length"] = str(size)
        request.context.update(self._context)
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(
            request
        )
        try:
            answer = self._http.send(request.prepare())
        except TRANSPORT_ERRORS as exc:
            return None, None, exc
        if answer.status_code < 300:
            return answer, None, None
        return answer, self._error_of(operation, answer), None

    def _error_of(self, operation: str, answer: AWSResponse) -> dict[str, Any]:
        shape = self._model.operation_model(operation).output_shape
        parsed: dict[str, Any] = self._parser.parse(
            {"status_code": answer.status_code, "headers": answer.headers, "body": answer.content},
            shape,
        )
        parsed.setdefault("Error", {}).setdefault("Code", str(answer.status_code))
        return parsed


def bucket_url(client: Any, bucket: str) -> str:
    """The bucket's base URL as the client addresses it: path style where the client uses it
    (a custom endpoint) or the name cannot be a host, else virtual-hosted on the client's own
    (regional) endpoint."""
    endpoint = str(client.meta.endpoint_url).rstrip("/")
    style = (client.meta.config.s3 or {}).get("addressing_style", "auto")
    scheme, host = endpoint.split("://", 1)
    if style == "path" or not check_dns_name(bucket) or _is_ip_literal(urlsplit(endpoint).hostname):
        return f"{endpoint}/{percent_encode(bucket)}"
    return f"{scheme}://{bucket}.{host}"


def _is_ip_literal(host: str | None) -> bool:
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True


class SendTimeoutSession(URLLib3Session):
    """botocore's HTTP session, whose requests are sent within ``send_timeout`` per socket
    operation (the read timeout, ``GATEWAY_S3_READ_TIMEOUT``) instead of the connect timeout.

    Why: urllib3 sends a request (headers and body) under the *connect* timeout, 5 s here
    (``GATEWAY_S3_CONNECT_TIMEOUT``, short so that an unreachable store fails fast; botocore's
    own default is 60 s). A store that takes a part's bytes more slowly than that, for 5 s at one
    moment, had the send time out: 1,000 slow uploads finishing their parts together on moto
    timed out 657 part sends (``ProtocolError('Connection aborted.', TimeoutError)``), and every
    retry sent the whole part again, to a store that was already behind. A store that accepts
    bytes is reachable; only a connection that is not made yet is timed by the connect timeout.
    """

    def __init__(self, *, send_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        classes = {
            "http": _pool_class(AWSHTTPConnectionPool, AWSHTTPConnection, send_timeout),
            "https": _pool_class(AWSHTTPSConnectionPool, AWSHTTPSConnection, send_timeout),
        }
        # botocore builds its pools from this mapping (its own and each proxy manager's)
        self._pool_classes_by_scheme = classes
        self._manager.pool_classes_by_scheme = classes  # type: ignore[attr-defined]  # no stub


def _pool_class(pool: type[Any], connection: type[Any], send_timeout: float) -> type[Any]:
    class Connection(connection):  # type: ignore[misc]
        def connect(self) -> None:
            super().connect()  # within the connect timeout
            self.sock.settimeout(send_timeout)

        def request(self, *args: Any, **kwargs: Any) -> None:
            if self.sock is not None:  # a pooled connection: urllib3 sets self.timeout on it
                self.timeout = send_timeout
            super().request(*args, **kwargs)

    return type(f"SendTimeout{pool.__name__}", (pool,), {"ConnectionCls": Connection})
