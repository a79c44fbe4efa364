"""The storage layer on local folders and on a real S3-compatible server (moto) on loopback."""

import boto3
import pytest

from portrait3d import storage
from portrait3d.errors import ImageTooLargeError, StorageError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/root"


def test_write_read_exists_list_delete(root):
    a, b = storage.join(root, "x", "a.bin"), storage.join(root, "x", "y", "b.png")
    storage.write_bytes(a, b"\x00\x01" * 1000)
    storage.write_bytes(b, b"png")
    storage.write_bytes(storage.join(root, ".hidden", "c.png"), b"c")
    assert storage.read_bytes(a) == b"\x00\x01" * 1000
    assert storage.exists(a) and not storage.exists(storage.join(root, "x", "nope"))
    assert storage.is_dir(storage.join(root, "x"))
    assert storage.list_files(root) == sorted([a, b])
    assert storage.list_files(storage.join(root, "x") + "/**/*.png") == [b]
    storage.delete_tree(storage.join(root, "x"))
    assert storage.list_files(storage.join(root, "x")) == []
    storage.delete_tree(storage.join(root, "x"))  # missing is fine


def test_read_errors_are_typed(root):
    with pytest.raises(StorageError, match="no such file"):
        storage.read_bytes(storage.join(root, "missing.jpg"))
    big = storage.join(root, "big.jpg")
    storage.write_bytes(big, b"0" * 5000)
    with pytest.raises(ImageTooLargeError):
        storage.read_bytes(big, max_bytes=4000)


def test_s3_objects_are_real(s3_bucket):
    """What the layer writes is what an independent S3 client reads."""
    storage.write_bytes(f"s3://{s3_bucket}/a/b.txt", b"hello")
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read()
    assert body == b"hello"


@pytest.mark.parametrize("part", ["..", "../x", "/etc", "", "a/../../b", "."])
def test_join_refuses_traversal(part):
    with pytest.raises(StorageError):
        storage.join("/tmp/out", part)


def test_local_write_is_atomic(tmp_path):
    target = str(tmp_path / "f.bin")
    storage.write_bytes(target, b"old")

    with pytest.raises(TypeError):
        storage.write_bytes(target, object())  # fails while writing the temporary file
    assert storage.read_bytes(target) == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_check_writable(tmp_path, s3_server):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(StorageError, match="is a file"):
        storage.check_writable(str(f))
    with pytest.raises(StorageError):
        storage.check_writable("s3://no-such-bucket-p3d/out")
    with pytest.raises(StorageError, match="scheme"):
        storage.normalize("gs://bucket/x")
    assert storage.check_writable(str(tmp_path / "new" / "out")).endswith("out")
