"""Object storage against the real loopback S3 server: round trips, retries, conditional writes,
the ``latest.json`` pointer protocol, and a store that goes away in the middle of an upload."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.awsrequest import AWSResponse
from s3_proxy import Proxy

from ssr.config import StorageConfig
from ssr.errors import CheckpointError, StorageError
from ssr.storage import (
    CheckpointPublisher,
    ObjectNotFoundError,
    PointerConflictError,
    PreconditionFailedError,
    copy,
    exists,
    join,
    list_objects,
    load_latest,
    localize,
    parse_s3,
    publish,
    read_bytes,
    read_pointer,
    s3,
    stat,
    write_bytes,
)
from ssr.storage.objects import read_bytes_etag

MB = 1024 * 1024
SMALL = StorageConfig(multipart_threshold_mb=5, max_attempts=2)


def _bucket(s3_env) -> str:
    return s3_env.create_bucket(f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def proxy(s3_env):
    p = Proxy(int(s3_env.endpoint.rsplit(":", 1)[1]))
    yield p
    p.stop()


# --------------------------------------------------------------------------- URIs and objects


def test_parse_and_join():
    loc = parse_s3("s3://bucket/a/b/")
    assert (loc.bucket, loc.key) == ("bucket", "a/b")
    assert join("s3://bucket/run1", "resume", "x.pth") == "s3://bucket/run1/resume/x.pth"
    assert join("s3://bucket", "latest.json") == "s3://bucket/latest.json"
    assert join("runs/x", "latest.json") == str(Path("runs/x/latest.json"))
    for bad in ("s3://", "s3:///key", "s3://b//k"):
        with pytest.raises(StorageError, match="malformed"):
            parse_s3(bad)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_round_trip_small_and_multipart(where, s3_env, tmp_path):
    base = str(tmp_path / "store") if where == "local" else f"s3://{_bucket(s3_env)}/p"
    small, big = os.urandom(1000), os.urandom(11 * MB)
    write_bytes(join(base, "small.bin"), small, SMALL)
    etag = write_bytes(join(base, "dir/big.bin"), big, SMALL)
    assert read_bytes(join(base, "small.bin"), SMALL) == small
    assert read_bytes(join(base, "dir/big.bin"), SMALL) == big
    assert stat(join(base, "dir/big.bin"), SMALL).size == 11 * MB
    assert [o.name for o in list_objects(base, SMALL)] == ["dir/big.bin", "small.bin"]
    assert not exists(join(base, "nope.bin"), SMALL)
    with pytest.raises(ObjectNotFoundError, match="nope.bin"):
        read_bytes(join(base, "nope.bin"), SMALL)
    if where == "s3":
        assert etag.endswith("-3")  # 11 MB in 5 MB parts: a real multipart upload
        assert stat(join(base, "dir/big.bin"), SMALL).etag == etag


def test_copy_is_server_side_on_s3(s3_env, proxy, tmp_path):
    bucket = _bucket(s3_env)
    big = os.urandom(11 * MB)
    write_bytes(f"s3://{bucket}/a/big.bin", big, SMALL)
    proxy.start(budget=1 << 40)  # counts the bytes sent, never cuts the connection
    via_proxy = StorageConfig(endpoint_url=proxy.endpoint, multipart_threshold_mb=5)
    copy(f"s3://{bucket}/a/big.bin", f"s3://{bucket}/b/big.bin", via_proxy)
    assert read_bytes(f"s3://{bucket}/b/big.bin") == big
    assert stat(f"s3://{bucket}/b/big.bin").etag.endswith("-3")  # copied in 5 MB parts
    assert proxy.forwarded < 100_000, "the object's bytes went through the client"
    with pytest.raises(ObjectNotFoundError, match="nope"):
        copy(f"s3://{bucket}/nope", f"s3://{bucket}/c", SMALL)

    (tmp_path / "x.bin").write_bytes(b"local")
    copy(str(tmp_path / "x.bin"), str(tmp_path / "sub" / "y.bin"))
    assert (tmp_path / "sub" / "y.bin").read_bytes() == b"local"
    with pytest.raises(StorageError, match="both must be"):
        copy(str(tmp_path / "x.bin"), f"s3://{bucket}/x.bin")


def test_publish_and_localize_dir(s3_env, tmp_path):
    src = tmp_path / "processed"
    (src / "sub").mkdir(parents=True)
    (src / "train_features.npy").write_bytes(os.urandom(2000))
    (src / "sub" / "x.json").write_text("{}")
    (src / "manifest.json").write_text('{"ok": true}')
    uri = f"s3://{_bucket(s3_env)}/data/processed"
    assert publish(src, uri) == uri
    cache = tmp_path / "cache"
    local = localize(uri, cache)
    assert local == cache / parse_s3(uri).bucket / "data" / "processed"
    for name in ("train_features.npy", "sub/x.json", "manifest.json"):
        assert (local / name).read_bytes() == (src / name).read_bytes()
    # unchanged objects are neither re-uploaded nor re-downloaded; removed ones disappear
    from ssr.storage import delete, download_dir, upload_dir

    assert upload_dir(src, uri) == 0
    assert download_dir(uri, local) == 0
    delete(join(uri, "sub/x.json"))
    assert download_dir(uri, local) == 0
    assert not (local / "sub" / "x.json").exists()
    assert localize("some/local/dir", cache) == Path("some/local/dir")
    with pytest.raises(ObjectNotFoundError, match="no objects"):
        localize(f"s3://{parse_s3(uri).bucket}/missing", cache)


def test_publish_cut_short_never_shows_the_manifest(s3_env, proxy, tmp_path):
    src = tmp_path / "processed"
    src.mkdir()
    (src / "a_features.npy").write_bytes(os.urandom(3 * MB))
    (src / "manifest.json").write_text("{}")
    (src / "z_index.npy").write_bytes(os.urandom(1000))
    uri = f"s3://{_bucket(s3_env)}/processed"
    proxy.start(budget=2 * MB)  # the store goes away during the first, large file
    with pytest.raises(StorageError):
        publish(src, uri, StorageConfig(endpoint_url=proxy.endpoint, max_attempts=1))
    assert not exists(join(uri, "manifest.json"))  # checked on the direct endpoint
    publish(src, uri)
    assert [o.name for o in list_objects(uri)] == ["a_features.npy", "manifest.json", "z_index.npy"]


# --------------------------------------------------------------------------- failures


def test_missing_bucket_is_a_quick_permanent_error(s3_env):
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-xyz/k.*bucket does not exist"):
        write_bytes("s3://no-such-bucket-xyz/k", b"x", StorageConfig(max_attempts=5))
    assert time.monotonic() - start < 2.0  # not retried


def test_transient_outage_is_retried_until_the_store_answers(s3_env, proxy):
    bucket = _bucket(s3_env)
    # botocore's standard mode waits rand(0, 50 ms * 2**i) before retry i of a connection
    # error: ten attempts wait up to 25 s in all, nearly always more than the 0.5 s outage
    storage = StorageConfig(endpoint_url=proxy.endpoint, max_attempts=10)
    timer = threading.Timer(0.5, proxy.start)  # nothing listens on the port for 0.5 s
    timer.start()
    start = time.monotonic()
    write_bytes(f"s3://{bucket}/k", b"after the outage", storage)
    assert time.monotonic() - start >= 0.4
    assert read_bytes(f"s3://{bucket}/k") == b"after the outage"  # via the direct endpoint


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_):
        yield self.data


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_a_failed_multipart_part_is_retried_alone(max_attempts, s3_env):
    """botocore retries each request: a part answered 503 once is sent again, the others not."""
    storage = StorageConfig(multipart_threshold_mb=5, max_attempts=max_attempts)
    uri = f"s3://{_bucket(s3_env)}/big"
    data = os.urandom(12 * MB)  # parts 1 and 2 of 5 MB, part 3 of 2 MB
    sent: list[int] = []
    lock = threading.Lock()

    def part_2_fails_once(request, **_):
        part = int(parse_qs(urlsplit(request.url).query)["partNumber"][0])
        with lock:
            sent.append(part)
            first_try = sent.count(part) == 1
        if part == 2 and first_try:  # the server's answer, as a store under load would give it
            return AWSResponse(request.url, 503, {}, _Body(b""))
        return None

    events = s3.client(storage).meta.events
    events.register("before-send.s3.UploadPart", part_2_fails_once)
    try:
        if max_attempts == 1:
            with pytest.raises(StorageError, match=f"upload {uri}"):
                write_bytes(uri, data, storage)
            assert not exists(uri)
        else:
            write_bytes(uri, data, storage)
            assert sorted(sent) == [1, 2, 2, 3]
            assert read_bytes(uri) == data
    finally:
        events.unregister("before-send.s3.UploadPart", part_2_fails_once)


def test_outage_longer_than_the_retries_is_a_storage_error(s3_env, proxy):
    storage = StorageConfig(endpoint_url=proxy.endpoint, max_attempts=2)  # proxy never started
    with pytest.raises(StorageError, match=r"s3://b/k: failed after 2 attempts"):
        write_bytes("s3://b/k", b"x", storage)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_conditional_writes(where, s3_env, tmp_path):
    uri = str(tmp_path / "obj") if where == "local" else f"s3://{_bucket(s3_env)}/obj"
    first = write_bytes(uri, b"one", if_none_match=True)
    with pytest.raises(PreconditionFailedError):
        write_bytes(uri, b"two", if_none_match=True)
    second = write_bytes(uri, b"two", if_match=first)
    with pytest.raises(PreconditionFailedError):
        write_bytes(uri, b"three", if_match=first)  # stale ETag
    assert read_bytes_etag(uri) == (b"two", second)


# --------------------------------------------------------------------------- pointer protocol


@pytest.mark.parametrize("where", ["local", "s3"])
def test_pointer_names_newest_verified_checkpoint(where, s3_env, tmp_path):
    directory = str(tmp_path / "ckpt") if where == "local" else f"s3://{_bucket(s3_env)}/run1"
    assert load_latest(directory) is None
    pub = CheckpointPublisher(directory, keep=2)
    blobs = [os.urandom(3000 + i) for i in range(3)]
    for i, blob in enumerate(blobs):
        pointer = pub.publish(blob, epoch=i + 1, global_step=10 * (i + 1), run_ids={"mlflow": "r"})
    found, data = load_latest(directory)
    assert data == blobs[-1] and found == pointer
    assert (found.epoch, found.global_step, found.size) == (3, 30, len(blobs[-1]))
    raw = json.loads(read_bytes(join(directory, "latest.json")))
    assert raw["checkpoint"] == found.checkpoint and raw["run_ids"] == {"mlflow": "r"}
    assert len(list_objects(join(directory, "resume"))) == 2  # older ones pruned


def test_second_writer_cannot_clobber_the_pointer(s3_env):
    directory = f"s3://{_bucket(s3_env)}/run1"
    a = CheckpointPublisher(directory)
    b = CheckpointPublisher(directory)  # both saw "no pointer yet"
    a.publish(b"from a", epoch=1, global_step=1)
    with pytest.raises(PointerConflictError, match="another writer"):
        b.publish(b"from b", epoch=1, global_step=2)
    assert load_latest(directory)[1] == b"from a"
    a.publish(b"a again", epoch=2, global_step=3)  # the owner keeps going
    assert load_latest(directory)[1] == b"a again"


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "missing"])
def test_damaged_checkpoint_is_refused(damage, s3_env):
    directory = f"s3://{_bucket(s3_env)}/run1"
    pointer = CheckpointPublisher(directory).publish(b"x" * 5000, epoch=1, global_step=5)
    uri = join(directory, pointer.checkpoint)
    if damage == "corrupt":
        write_bytes(uri, b"y" + b"x" * 4999)
    elif damage == "truncated":
        write_bytes(uri, b"x" * 4000)
    else:
        from ssr.storage import delete

        delete(uri)
    message = {
        "corrupt": "corrupt checkpoint: sha256",
        "truncated": "truncated",
        "missing": "missing",
    }
    with pytest.raises(CheckpointError, match=f"{uri}.*{message[damage]}"):
        load_latest(directory)


def test_store_lost_mid_upload_leaves_previous_checkpoint_and_pointer(s3_env, proxy):
    bucket = _bucket(s3_env)
    directory = f"s3://{bucket}/run1"
    storage = StorageConfig(endpoint_url=proxy.endpoint, multipart_threshold_mb=5, max_attempts=1)
    proxy.start()
    pub = CheckpointPublisher(directory, storage)
    good = pub.publish(b"epoch 1 state", epoch=1, global_step=10)
    before = read_pointer(directory)
    proxy.budget, proxy.forwarded = 7 * MB, 0  # the store dies after 7 of the 11 MB went up
    with pytest.raises(StorageError, match=f"upload {directory}/resume/e0002"):
        pub.publish(os.urandom(11 * MB), epoch=2, global_step=20)
    assert proxy.forwarded >= 7 * MB
    # the store is back: the pointer is untouched and still names a verified checkpoint
    assert read_pointer(directory) == before
    pointer, data = load_latest(directory)
    assert pointer == good and data == b"epoch 1 state"
    names = [o.name for o in list_objects(join(directory, "resume"))]
    assert names == [good.checkpoint.split("/", 1)[1]]  # no partial object became visible
