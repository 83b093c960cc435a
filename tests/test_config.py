"""Settings: env overlay, and start-up validation that names the variable at fault."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, MiB, Settings

from support import JWT_SECRET

BASE = {"GATEWAY_JWT_SECRET": JWT_SECRET}


def test_defaults_are_the_embedded_mode():
    settings = Settings.from_env(BASE)
    assert settings.storage_url == "var/media"
    assert settings.records_url == "sqlite:///var/gateway.db"
    assert settings.max_upload_bytes == 500 * MiB
    assert settings.allowed_types == ("image/*", "video/*", "audio/*")
    assert settings.effective_jwt_algorithm == "HS256"


def test_env_values_are_parsed():
    settings = Settings.from_env(
        {
            **BASE,
            "GATEWAY_MAX_UPLOAD_BYTES": "1048576",
            "GATEWAY_ALLOWED_TYPES": "image/png, video/mp4",
            "GATEWAY_STORAGE_URL": "s3://bucket/prefix",
            "GATEWAY_S3_READ_TIMEOUT": "2.5",
        }
    )
    assert settings.max_upload_bytes == 1 << 20
    assert settings.allowed_types == ("image/png", "video/mp4")
    assert settings.s3_read_timeout == 2.5


@pytest.mark.parametrize(
    "value, parsed",
    [
        ("*/*", ("*/*",)),
        ("image/*, text/*, application/pdf", ("image/*", "text/*", "application/pdf")),
        ("image/svg+xml,*/*", ("image/svg+xml", "*/*")),
    ],
)
def test_any_type_is_a_valid_allowed_type(value, parsed):
    assert Settings.from_env({**BASE, "GATEWAY_ALLOWED_TYPES": value}).allowed_types == parsed


@pytest.mark.parametrize(
    "setting,endpoint,mode",
    [
        ("auto", "", "crc32c"),  # AWS S3: it refuses a wrong CRC32C
        ("auto", "https://s3.eu-west-1.amazonaws.com", "crc32c"),
        ("auto", "https://bucket.vpce-0a1b.s3.us-east-1.vpce.amazonaws.com", "crc32c"),
        ("auto", "http://127.0.0.1:9000", "md5"),  # moto, Ceph, MinIO...: not known
        ("auto", "https://rgw.example.com", "md5"),
        ("auto", "https://notamazonaws.com", "md5"),
        ("auto", "https://amazonaws.com.example.net", "md5"),
        ("md5", "", "md5"),
        ("crc32c", "http://127.0.0.1:9000", "crc32c"),
    ],
)
def test_s3_integrity_mode(setting, endpoint, mode):
    env = {**BASE, "GATEWAY_S3_INTEGRITY": setting, "GATEWAY_S3_ENDPOINT_URL": endpoint}
    settings = Settings.from_env(env)
    assert settings.s3_integrity == setting
    assert settings.effective_s3_integrity == mode


def test_part_size_grows_so_the_cap_fits_in_10000_parts():
    settings = Settings.from_env({**BASE, "GATEWAY_MAX_UPLOAD_BYTES": str(200 * 1024 * MiB)})
    assert settings.effective_part_size * 10_000 >= settings.max_upload_bytes


@pytest.mark.parametrize(
    "env, variable",
    [
        ({}, "GATEWAY_JWT_SECRET"),
        ({"GATEWAY_JWT_SECRET": "short"}, "GATEWAY_JWT_SECRET"),
        ({"GATEWAY_JWT_ALGORITHM": "HS512"}, "GATEWAY_JWT_ALGORITHM"),
        ({"GATEWAY_JWT_ALGORITHM": "RS256"}, "GATEWAY_JWT_PUBLIC_KEY"),
        ({"GATEWAY_MAX_UPLOAD_BYTES": "lots"}, "GATEWAY_MAX_UPLOAD_BYTES"),
        ({"GATEWAY_MAX_UPLOAD_BYTES": "0"}, "GATEWAY_MAX_UPLOAD_BYTES"),
        ({"GATEWAY_S3_PART_SIZE": "1024"}, "GATEWAY_S3_PART_SIZE"),
        ({"GATEWAY_S3_INTEGRITY": "sha256"}, "GATEWAY_S3_INTEGRITY"),
        ({"GATEWAY_S3_INTEGRITY": "MD5"}, "GATEWAY_S3_INTEGRITY"),
        ({"GATEWAY_STORAGE_URL": "s3://"}, "GATEWAY_STORAGE_URL"),
        ({"GATEWAY_STORAGE_URL": "gs://bucket"}, "GATEWAY_STORAGE_URL"),
        ({"GATEWAY_RECORDS_URL": "postgres://x"}, "GATEWAY_RECORDS_URL"),
        ({"GATEWAY_RECORDS_URL": "dynamodb://"}, "GATEWAY_RECORDS_URL"),
        ({"GATEWAY_ALLOWED_TYPES": "image"}, "GATEWAY_ALLOWED_TYPES"),
        ({"GATEWAY_ALLOWED_TYPES": "*/png"}, "GATEWAY_ALLOWED_TYPES"),
        ({"GATEWAY_ALLOWED_TYPES": "*"}, "GATEWAY_ALLOWED_TYPES"),
        ({"GATEWAY_ALLOWED_TYPES": "*/*x"}, "GATEWAY_ALLOWED_TYPES"),
        ({"GATEWAY_CDN_BASE_URL": "cdn.example.com"}, "GATEWAY_CDN_BASE_URL"),
        ({"GATEWAY_CLOUDFRONT_KEY_ID": "K1"}, "GATEWAY_CLOUDFRONT_KEY_ID"),
        ({"GATEWAY_LOG_LEVEL": "LOUD"}, "GATEWAY_LOG_LEVEL"),
        ({"GATEWAY_SNS_TOPIC_ARN": "media-events"}, "GATEWAY_SNS_TOPIC_ARN"),
        ({"GATEWAY_SNS_TOPIC_ARN": "arn:aws:sqs:us-east-1:1:q"}, "GATEWAY_SNS_TOPIC_ARN"),
        ({"GATEWAY_S3_EVENTS_SECRET": "x" * 31}, "GATEWAY_S3_EVENTS_SECRET"),
        ({"GATEWAY_S3_EVENTS_SECRET": "x" * 31 + "@"}, "GATEWAY_S3_EVENTS_SECRET"),
        ({"GATEWAY_S3_EVENTS_SECRET": "x" * 31 + ":"}, "GATEWAY_S3_EVENTS_SECRET"),
        ({"GATEWAY_SESSION_COOKIE_SAMESITE": "lax"}, "GATEWAY_SESSION_COOKIE_SAMESITE"),
        ({"GATEWAY_SESSION_COOKIE_SECURE": "no"}, "GATEWAY_SESSION_COOKIE_SECURE"),
        ({"GATEWAY_SESSION_COOKIE_SECURE": "off"}, "GATEWAY_SESSION_COOKIE_SECURE"),  # __Host-
        (
            {
                "GATEWAY_SESSION_COOKIE_SECURE": "off",
                "GATEWAY_SESSION_COOKIE": "s",
                "GATEWAY_SESSION_COOKIE_SAMESITE": "None",
            },
            "GATEWAY_SESSION_COOKIE_SECURE",
        ),
        ({"GATEWAY_SESSION_COOKIE": "a b"}, "GATEWAY_SESSION_COOKIE"),
        ({"GATEWAY_SESSION_COOKIE": "__Host-"}, "GATEWAY_SESSION_COOKIE"),
        ({"GATEWAY_REDIRECT_ORIGINS": "https://a.example/"}, "GATEWAY_REDIRECT_ORIGINS"),
        ({"GATEWAY_REDIRECT_ORIGINS": "ftp://a.example"}, "GATEWAY_REDIRECT_ORIGINS"),
        ({"GATEWAY_CORS_ORIGINS": "https://app.example/"}, "GATEWAY_CORS_ORIGINS"),
        ({"GATEWAY_CORS_ORIGINS": "https://*.example"}, "GATEWAY_CORS_ORIGINS"),
        ({"GATEWAY_CORS_ORIGINS": "null"}, "GATEWAY_CORS_ORIGINS"),
        ({"GATEWAY_PAGE_DIRECT_MIN_BYTES": "0"}, "GATEWAY_PAGE_DIRECT_MIN_BYTES"),
        ({"GATEWAY_WEBHOOK_CONCURRENCY": "0"}, "GATEWAY_WEBHOOK_CONCURRENCY"),
        ({"GATEWAY_WEBHOOK_CONCURRENCY": "two"}, "GATEWAY_WEBHOOK_CONCURRENCY"),
        ({"GATEWAY_WEBHOOK_QUEUE_URL": "redis://q"}, "GATEWAY_WEBHOOK_QUEUE_URL"),
        ({"GATEWAY_WEBHOOK_QUEUE_URL": "sqs://"}, "GATEWAY_WEBHOOK_QUEUE_URL"),
        ({"GATEWAY_WEBHOOK_QUEUE_URL": "sqlite://q.db"}, "GATEWAY_WEBHOOK_QUEUE_URL"),
        ({"GATEWAY_WEBHOOK_QUEUE_URL": "sqlite:///var/queue.db"}, "GATEWAY_WEBHOOK_QUEUE_URL"),
        (
            {"GATEWAY_QUEUE_URL": "sqs://jobs", "GATEWAY_WEBHOOK_QUEUE_URL": "sqs://jobs"},
            "GATEWAY_WEBHOOK_QUEUE_URL",
        ),
        # Also without scanning: failed media are withheld there.
        (
            {"GATEWAY_STORAGE_URL": "s3://bucket/media", "GATEWAY_QUARANTINE_URL": "/srv/held"},
            "GATEWAY_QUARANTINE_URL",
        ),
        ({"GATEWAY_QUARANTINE_URL": "s3://bucket/held"}, "GATEWAY_QUARANTINE_URL"),
        ({"GATEWAY_AUDIO_MAX_DURATION": "0"}, "GATEWAY_AUDIO_MAX_DURATION"),
        ({"GATEWAY_AUDIO_MAX_SAMPLES": "0"}, "GATEWAY_AUDIO_MAX_SAMPLES"),
        ({"GATEWAY_AUDIO_MAX_DECODE_SECONDS": "-1"}, "GATEWAY_AUDIO_MAX_DECODE_SECONDS"),
        ({"GATEWAY_AUDIO_WAVEFORM_POINTS": "15"}, "GATEWAY_AUDIO_WAVEFORM_POINTS"),
        ({"GATEWAY_AUDIO_WAVEFORM_POINTS": "100001"}, "GATEWAY_AUDIO_WAVEFORM_POINTS"),
        ({"GATEWAY_AUDIO_OPUS_MIN_BYTES": "-1"}, "GATEWAY_AUDIO_OPUS_MIN_BYTES"),
        ({"GATEWAY_AUDIO_OPUS_MONO_BIT_RATE": "5999"}, "GATEWAY_AUDIO_OPUS_MONO_BIT_RATE"),
        ({"GATEWAY_AUDIO_OPUS_STEREO_BIT_RATE": "510001"}, "GATEWAY_AUDIO_OPUS_STEREO_BIT_RATE"),
    ],
)
def test_invalid_settings_fail_naming_the_variable(env, variable):
    merged = env if not env or "GATEWAY_JWT_SECRET" in env else {**BASE, **env}
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(merged)


@pytest.mark.parametrize(
    "queue, webhooks",
    [
        ("sqlite:///var/queue.db", "sqlite:///var/queue-webhooks.db"),
        ("sqlite:////srv/jobs", "sqlite:////srv/jobs-webhooks"),
        ("sqlite:///./v.d/jobs", "sqlite:///./v.d/jobs-webhooks"),
        ("sqs://media-jobs", "sqs://media-jobs-webhooks"),
    ],
)
def test_webhook_deliveries_queue_beside_the_processing_queue_unless_told(queue, webhooks):
    settings = Settings.from_env({**BASE, "GATEWAY_QUEUE_URL": queue})
    assert (settings.webhook_queue_url, settings.effective_webhook_queue_url) == ("", webhooks)
    assert settings.webhook_concurrency == 4
    told = Settings.from_env(
        {**BASE, "GATEWAY_QUEUE_URL": queue, "GATEWAY_WEBHOOK_QUEUE_URL": "sqs://hooks"}
    )
    assert told.effective_webhook_queue_url == "sqs://hooks"


def test_browser_session_settings_that_go_together_are_accepted():
    plain = Settings.from_env(
        {
            **BASE,
            "GATEWAY_SESSION_COOKIE": "uploads",
            "GATEWAY_SESSION_COOKIE_SECURE": "off",
            "GATEWAY_SESSION_COOKIE_SAMESITE": "Strict",
            "GATEWAY_REDIRECT_ORIGINS": "https://Forms.example.org, http://localhost:8080",
            "GATEWAY_CORS_ORIGINS": "https://App.example.org, http://localhost:3000, *",
        }
    )
    assert plain.redirect_origins == ("https://Forms.example.org", "http://localhost:8080")
    assert plain.cors_origins == ("https://App.example.org", "http://localhost:3000", "*")
    assert Settings.from_env({**BASE, "GATEWAY_SESSION_COOKIE_SAMESITE": "None"})


def test_cloudfront_signed_urls(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from gateway.media.urls import PublicUrls
    from gateway.storage.local import LocalObjectStore

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    settings = Settings.from_env(
        {
            **BASE,
            "GATEWAY_CDN_BASE_URL": "https://cdn.example.com/",
            "GATEWAY_CLOUDFRONT_KEY_ID": "KABC",
            "GATEWAY_CLOUDFRONT_PRIVATE_KEY": pem,
        }
    )
    url = PublicUrls(settings, LocalObjectStore(tmp_path)).url("projects/p/media/x.png")
    assert url.startswith("https://cdn.example.com/projects/p/media/x.png?Expires=")
    assert "Signature=" in url and "Key-Pair-Id=KABC" in url
    plain = Settings.from_env({**BASE, "GATEWAY_CDN_BASE_URL": "https://cdn.example.com"})
    assert (
        PublicUrls(plain, LocalObjectStore(tmp_path)).url("a b.png")
        == "https://cdn.example.com/a%20b.png"
    )
    embedded = PublicUrls(Settings.from_env(BASE), LocalObjectStore(tmp_path))
    assert embedded.url("k.png", request_base="http://h:1/") == "http://h:1/media/k.png"


@pytest.mark.parametrize(
    "command",
    [["flask", "--app", "wsgi", "token"], ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]],
    ids=["flask", "gunicorn"],
)
@pytest.mark.parametrize(
    "env, variable",
    [
        ({"GATEWAY_JWT_SECRET": "short"}, "GATEWAY_JWT_SECRET"),
        ({"GATEWAY_JWT_SECRET": JWT_SECRET, "GATEWAY_MAX_FILES": "many"}, "GATEWAY_MAX_FILES"),
        ({"GATEWAY_JWT_SECRET": JWT_SECRET, "GATEWAY_MAX_FILES": "100"}, "GATEWAY_MAX_FILES"),
    ],
)
def test_a_bad_setting_stops_the_process_with_one_line(tmp_path, command, env, variable):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from support import ROOT, free_port

    bin_dir = Path(sys.executable).parent
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run(
        [str(bin_dir / command[0]), *command[1:]],
        cwd=ROOT,
        env={**clean, **env, "GATEWAY_BIND": f"127.0.0.1:{free_port()}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"upload-gateway: configuration error: {variable}:"
    ), done.stderr
    assert done.stdout == ""


def test_cdn_urls_are_relative_to_the_storage_prefix():
    """CloudFront's origin path is the storage prefix: the CDN path is the store's key, while
    the answer's s3Key is the full key in the bucket."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    from gateway.media.urls import PublicUrls
    from gateway.storage.s3 import S3ObjectStore
    from gateway.storage.s3_requests import S3Requests

    client = boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    store = S3ObjectStore(
        client,
        bucket="b",
        prefix="uploads",
        part_size=5 * MiB,
        parts_in_flight=1,
        endpoint_url="",
        region="us-east-1",
        executor=ThreadPoolExecutor(1),
        requests=S3Requests(
            client,
            bucket="b",
            max_attempts=1,
            connect_timeout=1,
            read_timeout=1,
            max_pool_connections=1,
        ),
        integrity="md5",
    )
    settings = Settings.from_env({**BASE, "GATEWAY_CDN_BASE_URL": "https://cdn.example.com"})
    key = "projects/p/media/x.png"
    assert PublicUrls(settings, store).url(key) == f"https://cdn.example.com/{key}"
    assert store.full_key(key) == f"uploads/{key}"
    plain = Settings.from_env(BASE)
    assert (
        PublicUrls(plain, store).url(key) == f"https://b.s3.us-east-1.amazonaws.com/uploads/{key}"
    )


def test_gunicorn_refuses_a_graceful_timeout_that_leaves_no_time_to_roll_back(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from support import ROOT, free_port

    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env = {
        **clean,
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_BIND": f"127.0.0.1:{free_port()}",
        "GATEWAY_SHUTDOWN_UPLOAD_GRACE": "30",
    }
    gunicorn = [
        str(Path(sys.executable).parent / "gunicorn"),
        "-c",
        "gunicorn.conf.py",
        "--check-config",
        "wsgi:app",
    ]

    def check(graceful_timeout: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            gunicorn,
            cwd=ROOT,
            env={**env, "GATEWAY_GRACEFUL_TIMEOUT": graceful_timeout},
            capture_output=True,
            text=True,
            timeout=60,
        )

    short = check("44")
    assert short.returncode == 2, short.stderr
    assert short.stderr.strip().splitlines() == [
        "upload-gateway: configuration error: GATEWAY_GRACEFUL_TIMEOUT: must be at least "
        "GATEWAY_SHUTDOWN_UPLOAD_GRACE + 15 s (30 + 15)"
    ]
    enough = check("45")
    assert enough.returncode == 0, enough.stderr


def test_audio_settings_at_their_bounds_are_accepted():
    settings = Settings.from_env(
        {
            **BASE,
            "GATEWAY_AUDIO_WAVEFORM_POINTS": "16",
            "GATEWAY_AUDIO_OPUS_MIN_BYTES": "0",
            "GATEWAY_AUDIO_OPUS_MONO_BIT_RATE": "6000",
            "GATEWAY_AUDIO_OPUS_STEREO_BIT_RATE": "510000",
        }
    )
    assert (settings.audio_waveform_points, settings.audio_opus_min_bytes) == (16, 0)
    assert Settings.from_env({**BASE, "GATEWAY_AUDIO_WAVEFORM_POINTS": "100000"})
    assert Settings.from_env(BASE).audio_opus_stereo_bit_rate == 96_000


@pytest.mark.parametrize(
    "arn, region",
    [
        ("arn:aws:sns:eu-west-1:123456789012:media", "eu-west-1"),
        ("arn:aws:sns:eu-west-1:123456789012:media.fifo", "eu-west-1"),
        ("arn:aws:sns:default::media", "default"),  # Ceph RGW: the zonegroup, no account
        ("", "us-east-1"),
    ],
)
def test_sns_is_called_in_the_topics_region(arn, region):
    settings = Settings.from_env({**BASE, "GATEWAY_SNS_TOPIC_ARN": arn})
    assert settings.sns_region == region
    assert settings.delivers is bool(arn)


def test_the_events_secret_is_never_in_an_error_nor_the_settings_repr():
    secret = "s" * 40
    settings = Settings.from_env({**BASE, "GATEWAY_S3_EVENTS_SECRET": secret})
    assert settings.s3_events_secret == secret and secret not in repr(settings)
    with pytest.raises(ConfigError) as failed:
        Settings.from_env({**BASE, "GATEWAY_S3_EVENTS_SECRET": secret + "@"})
    assert secret not in str(failed.value)
