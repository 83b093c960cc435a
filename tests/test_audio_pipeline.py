"""Audio through the whole pipeline: upload -> stored -> worker -> ready with a waveform (peaks
JSON, PNG) and, for lossless audio, an Ogg Opus copy; file type audio in the record, the API and
the stats; a container settled by the worker; bad input failed with its reason, nothing derived
left behind, the worker going on."""

from __future__ import annotations

import io
import json

import av
import media_samples as samples
import pytest
from PIL import Image
from test_pipeline import fetch, settled, work
from webhook_receiver import SECRET, Receiver

from gateway import create_app
from gateway.http.auth import mint_token
from gateway.media.lifecycle import Status

from conftest import init_stores, make_settings
from support import form_body, read_object

pytestmark = pytest.mark.timeout(180)


def gateway(tmp_path, backend="local", moto_url=None, **overrides):
    settings = make_settings(
        tmp_path,
        backend=backend,
        moto_url=moto_url,
        audio_opus_min_bytes=100_000,
        **overrides,
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    svc = app.extensions["gateway"]
    init_stores(svc)
    with app.app_context():
        auth = {"Authorization": f"Bearer {mint_token('alice')}"}
    return app, svc, auth


def upload(client, auth, content, name):
    body, content_type = form_body([("projectId", "p1")], [("file", name, content)])
    response = client.post("/api/upload", data=body, headers={"Content-Type": content_type, **auth})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def view(client, auth, media_id):
    return client.get(f"/api/media/{media_id}", headers=auth).get_json()


def keys_of(svc, media_id) -> list[str]:
    return sorted(o.key for o in svc.storage.listing.objects() if media_id in o.key)


def test_a_wav_becomes_ready_with_its_waveform_and_an_opus_copy(tmp_path):
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    media = upload(client, auth, samples.wav(2.0), "field.wav")
    assert (media["fileType"], media["contentType"]) == ("audio", "audio/wav")
    assert media["s3Key"].endswith(".wav")
    work(svc, settled(svc, media["mediaId"]))
    ready = view(client, auth, media["mediaId"])
    assert ready["status"] == "ready" and ready["fileType"] == "audio"
    props = ready["properties"]
    assert (props["duration"], props["sampleRate"], props["channels"]) == (2.0, 48_000, 2)
    assert (props["codec"], props["container"], props["bitRate"]) == ("pcm_s16le", "wav", 1_536_000)
    assert props["lossless"] is True and props["tags"] == {}
    by_name = {v["name"]: v for v in ready["variants"]}
    assert [v["name"] for v in ready["variants"]] == ["peaks", "waveform", "opus"]
    assert (by_name["peaks"]["contentType"], by_name["peaks"]["width"]) == (
        "application/json",
        None,
    )
    assert by_name["waveform"]["contentType"] == "image/png"
    assert by_name["opus"]["contentType"] == "audio/ogg" and by_name["opus"]["height"] is None
    document = json.loads(fetch(client, by_name["peaks"]["url"]))
    assert document["version"] == 2 and max(document["data"]) == round(0.5 * 32767)
    assert by_name["peaks"]["size"] == len(json.dumps(document, separators=(",", ":")))
    png = Image.open(io.BytesIO(fetch(client, by_name["waveform"]["url"])))
    assert png.size == (by_name["waveform"]["width"], by_name["waveform"]["height"])
    opus = fetch(client, by_name["opus"]["url"])
    assert len(opus) == by_name["opus"]["size"] == props["transcode"]["size"]
    with av.open(io.BytesIO(opus)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        count = sum(frame.samples for frame in container.decode(stream))
    assert abs(count / 48_000 - 2.0) <= 0.02
    stem = ready["s3Key"].removesuffix(".wav")
    assert keys_of(svc, media["mediaId"]) == sorted(
        [ready["s3Key"], f"{stem}/peaks.json", f"{stem}/waveform.png", f"{stem}/opus.ogg"]
    )
    stats = client.get("/api/stats?projectId=p1", headers=auth).get_json()
    assert stats["byType"] == {"audio": {"files": 1, "bytes": media["size"]}}


def test_served_variants_have_their_types(tmp_path):
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    media = upload(client, auth, samples.wav(1.0), "a.wav")
    work(svc, settled(svc, media["mediaId"]))
    served = {}
    for item in [view(client, auth, media["mediaId"]), *view(client, auth, media["mediaId"])["variants"]]:  # fmt: skip
        path = item["url"].split("://", 1)[1].split("/", 1)[1]
        response = client.get("/" + path)
        served[item.get("name", "original")] = (
            response.status_code,
            response.mimetype,
            response.headers.get("Content-Disposition", "").split(";")[0],
        )
    assert served == {
        "original": (200, "audio/wav", "inline"),
        "peaks": (200, "application/json", "attachment"),
        "waveform": (200, "image/png", "inline"),
        "opus": (200, "audio/ogg", "inline"),
    }


def test_an_mp3_is_not_transcoded(tmp_path):
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    media = upload(client, auth, samples.audio("mp3", 2.0), "song.mp3")
    assert media["contentType"] == "audio/mpeg"
    work(svc, settled(svc, media["mediaId"]))
    ready = view(client, auth, media["mediaId"])
    assert [v["name"] for v in ready["variants"]] == ["peaks", "waveform"]
    assert ready["properties"]["transcode"] == {"skipped": "already compressed (mp3)"}


def test_an_audio_only_mp4_is_stored_as_video_and_becomes_audio(tmp_path):
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    data = samples.encode(samples.wav(1.0), "mp4", "aac")  # track list at the end
    media = upload(client, auth, data, "phone.mp4")
    assert (media["fileType"], media["contentType"]) == ("video", "video/mp4")
    before = client.get("/api/stats?projectId=p1", headers=auth).get_json()["byType"]
    assert before == {"video": {"files": 1, "bytes": len(data)}}
    work(svc, settled(svc, media["mediaId"]))
    ready = view(client, auth, media["mediaId"])
    assert ready["status"] == "ready"
    assert (ready["fileType"], ready["contentType"]) == ("audio", "audio/mp4")
    assert ready["s3Key"] == media["s3Key"]  # the object stays where it is
    after = client.get("/api/stats?projectId=p1", headers=auth).get_json()["byType"]
    assert after == {"audio": {"files": 1, "bytes": len(data)}}


def test_an_unsettled_mp4_where_only_audio_is_allowed_is_stored_as_audio(tmp_path):
    app, svc, auth = gateway(tmp_path, allowed_types=("audio/*",))
    client = app.test_client()
    media = upload(client, auth, samples.encode(samples.wav(1.0), "mp4", "aac"), "phone.mp4")
    assert (media["fileType"], media["contentType"]) == ("audio", "audio/mp4")
    assert media["s3Key"].endswith(".m4a")
    work(svc, settled(svc, media["mediaId"]))
    assert svc.records.get(media["mediaId"]).status is Status.READY


def test_a_container_that_settles_on_a_type_not_allowed_fails_with_nothing_derived(tmp_path):
    app, svc, auth = gateway(tmp_path, allowed_types=("video/*",))
    client = app.test_client()
    media = upload(client, auth, samples.encode(samples.wav(1.0), "mp4", "aac"), "phone.mp4")
    work(svc, settled(svc, media["mediaId"]))
    failed = view(client, auth, media["mediaId"])
    assert failed["status"] == "failed" and failed["variants"] == [] and failed["url"] is None
    assert failed["error"] == ("The file is audio/mp4 (it holds audio only); allowed: video/*.")
    assert [k for k in keys_of(svc, media["mediaId"]) if "/" + media["mediaId"] + "/" in k] == []


@pytest.mark.parametrize(
    "content, name, reason",
    [
        (samples.audio("mp3", 1.0)[:8000], "cut.mp3", "The audio is truncated: its header says"),
        (
            b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00"
            b"\x80\x3e\x00\x00\x02\x00\x10\x00data\xf0\xff\xff\x7f" + b"\0" * 64,
            "bomb.wav",
            "The audio claims to last 134218 s, longer than the limit of 14400 s: refused as an "
            "audio bomb.",
        ),
    ],
    ids=["truncated", "bomb"],
)
def test_bad_audio_fails_with_its_reason_and_the_worker_goes_on(tmp_path, content, name, reason):
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    bad = upload(client, auth, content, name)
    fine = upload(client, auth, samples.wav(1.0), "fine.wav")
    work(svc, lambda: settled(svc, bad["mediaId"])() and settled(svc, fine["mediaId"])())
    failed = view(client, auth, bad["mediaId"])
    assert failed["status"] == "failed" and failed["variants"] == []
    assert failed["error"].startswith(f"The file cannot be processed: Undecodable: {reason}")
    assert [k for k in keys_of(svc, bad["mediaId"]) if f"/{bad['mediaId']}/" in k] == []
    assert svc.records.get(fine["mediaId"]).status is Status.READY
    assert svc.queue.stats().dead == 0  # handled, not poison


def test_audio_announces_stored_and_ready_as_images_do(tmp_path):
    with Receiver() as receiver:
        app, svc, auth = gateway(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET)
        client = app.test_client()
        media = upload(client, auth, samples.audio("opus", 1.0), "note.opus")
        assert media["s3Key"].endswith(".opus")
        work(svc, lambda: len(receiver.unique()) == 2)
    mid = media["mediaId"]
    got = receiver.unique()
    assert set(got) == {f"{mid}.media.stored", f"{mid}.media.ready"}
    assert got[f"{mid}.media.ready"]["data"]["status"] == "ready"


def test_on_s3_the_opus_copy_is_streamed_to_the_store(tmp_path, moto_url):
    app, svc, auth = gateway(tmp_path, backend="s3", moto_url=moto_url)
    client = app.test_client()
    media = upload(client, auth, samples.wav(2.0, signal="noise", amplitude=0.2), "n.wav")
    work(svc, settled(svc, media["mediaId"]))
    record = svc.records.get(media["mediaId"])
    assert record.status is Status.READY
    opus = next(v for v in record.variants if v.name == "opus")
    data = read_object(svc.store, opus.key)
    assert data.startswith(b"OggS") and len(data) == opus.size
    assert opus.key.endswith("/opus.ogg")
