"""Landing file hashes kept by the process (``assets.ingest.file_sha256``): a file is hashed
again whenever anything about it may have changed, and only then."""

import os
import time

import assets.ingest as ingest
from transforms.validation import sha256_of


def _counting(monkeypatch) -> list[bytes]:
    hashed: list[bytes] = []
    real = ingest.sha256_of

    def counted(content: bytes) -> str:
        hashed.append(content)
        return real(content)

    monkeypatch.setattr(ingest, "sha256_of", counted)
    return hashed


def test_an_old_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    hashed = _counting(monkeypatch)
    path = tmp_path / "trades.csv"
    path.write_text("trade_id\nT1\n")
    old = time.time() - 60
    os.utime(path, (old, old))
    assert ingest.file_sha256(path) == sha256_of(b"trade_id\nT1\n")
    assert ingest.file_sha256(path) == sha256_of(b"trade_id\nT1\n") and len(hashed) == 1
    # rewritten in place with the same size and its modification time set back as it was: the
    # change time still moves
    time.sleep(0.01)
    path.write_text("trade_id\nT2\n")
    os.utime(path, (old, old))
    assert ingest.file_sha256(path) == sha256_of(b"trade_id\nT2\n") and len(hashed) == 2
    # replaced by a rename (a new inode)
    other = tmp_path / ".next"
    other.write_text("trade_id\nT3\n")
    os.utime(other, (old, old))
    other.rename(path)
    assert ingest.file_sha256(path) == sha256_of(b"trade_id\nT3\n") and len(hashed) == 3


def test_a_file_modified_just_now_is_hashed_every_time(tmp_path, monkeypatch):
    hashed = _counting(monkeypatch)
    path = tmp_path / "trades.csv"
    path.write_text("trade_id\nT1\n")
    ingest.file_sha256(path)
    path.write_text("trade_id\nT2\n")  # same size, likely within the same time stamp tick
    assert ingest.file_sha256(path) == sha256_of(b"trade_id\nT2\n")
    assert len(hashed) == 2
