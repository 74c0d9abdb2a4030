"""The checkpoint registry: resolution order, md5 checks, atomic downloads and error messages.

Downloads are served from a local ``http.server`` on 127.0.0.1 or simulated by replacing
``sampt.checkpoints._urlopen``; nothing touches the internet.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import threading
import urllib.error
import warnings
from functools import partial

import pytest

from sampt import checkpoints
from sampt.checkpoints import Checkpoint, cache_dir, file_md5, list_checkpoints, main, resolve_checkpoint
from sampt.errors import CheckpointError

PAYLOAD = b"tiny checkpoint bytes " * 1000
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh cache directory and fresh in-process memo/warning state for every test."""
    monkeypatch.setenv("SAMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoints, "_md5_memo", {})
    monkeypatch.setattr(checkpoints, "_warned_no_md5", set())


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve ``tmp_path / "served"`` over HTTP on 127.0.0.1; yields (base URL, served directory)."""
    # A machine-wide HTTP proxy must not intercept requests to the local server.
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(variable, "127.0.0.1,localhost")
    served = tmp_path / "served"
    served.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def register(monkeypatch, name="tiny_test", filename="tiny.pth", url="http://127.0.0.1:9/tiny.pth", md5=PAYLOAD_MD5):
    entry = Checkpoint(name, filename, url, md5, "sam", "test entry", 1.0)
    monkeypatch.setitem(checkpoints.CHECKPOINTS, name, entry)
    return entry


def forbid_download(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("resolve_checkpoint must not download here")

    monkeypatch.setattr(checkpoints, "_urlopen", fail)


def cache_listing() -> list[str]:
    cache = cache_dir()
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_cache_dir_from_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPT_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("SAMPT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "sampt"


def test_registry_holds_the_published_checkpoints():
    published = {
        "sam_vit_b": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth", "01ec64d29a2fca3f0661936605ae66f8"),
        "sam_vit_l": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth", "0b3195507c641ddb6910d2bb5adee89c"),
        "sam_vit_h": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth", "4b8939a88964f0f4ff5f5b2642c598a6"),
        "samhq_vit_b": ("https://huggingface.co/lkeab/hq-sam/resolve/67ab82412bc794d5ce2e9799b8b6a3c0a8cfe1d2/sam_hq_vit_b.pth", "c6b8953247bcfdc8bb8ef91e36a6cacc"),
        "samhq_vit_l": ("https://huggingface.co/lkeab/hq-sam/resolve/67ab82412bc794d5ce2e9799b8b6a3c0a8cfe1d2/sam_hq_vit_l.pth", "08947267966e4264fb39523eccc33f86"),
        "samhq_vit_h": ("https://huggingface.co/lkeab/hq-sam/resolve/67ab82412bc794d5ce2e9799b8b6a3c0a8cfe1d2/sam_hq_vit_h.pth", "3560f6b6a5a6edacd814a1325c39640a"),
        "samhq_vit_tiny": ("https://huggingface.co/lkeab/hq-sam/resolve/a3a77cd0a2e5e50eaa76faccf61b964732d9b35f/sam_hq_vit_tiny.pth", "3a661ab92d4088ccd6232fa542998a65"),
        "mobile_sam_vit_t": ("https://github.com/ChaoningZhang/MobileSAM/raw/01ea8d0f5590082f0c1ceb0a3e2272593f20154b/weights/mobile_sam.pt", "f3c0d8cda613564d499310dab6c812cd"),
        "cotracker_stride_4_wind_8": ("https://dl.fbaipublicfiles.com/cotracker/cotracker_stride_4_wind_8.pth", "82c458ad5de9bf98bc337c34ccbc436a"),
        "cotracker_stride_4_wind_12": ("https://dl.fbaipublicfiles.com/cotracker/cotracker_stride_4_wind_12.pth", "f13ab80f04b2cb58945e2dffb5a3a44c"),
        "cotracker_stride_8_wind_16": ("https://dl.fbaipublicfiles.com/cotracker/cotracker_stride_8_wind_16.pth", "d0d25fe323b20d11c447aaa05a923650"),
        "cotracker3_offline": ("https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth", None),
    }
    for name, (url, md5) in published.items():
        entry = checkpoints.CHECKPOINTS[name]
        assert (entry.name, entry.url, entry.md5) == (name, url, md5)
        assert entry.filename == url.rsplit("/", 1)[-1]
        assert entry.component == ("tracker" if name.startswith("cotracker") else "sam")


def test_explicit_path_wins_and_is_not_hashed(tmp_path, monkeypatch):
    entry = register(monkeypatch)
    cache_dir().mkdir(parents=True)
    (cache_dir() / entry.filename).write_bytes(PAYLOAD)
    explicit = tmp_path / "finetuned.pth"
    explicit.write_bytes(b"fine-tuned weights with another md5")
    forbid_download(monkeypatch)
    assert resolve_checkpoint(entry.name, explicit) == explicit
    assert resolve_checkpoint(None, str(explicit)) == explicit


def test_missing_explicit_path_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(CheckpointError, match="nowhere/weights.pt"):
        resolve_checkpoint(None, missing)
    with pytest.raises(CheckpointError, match="no checkpoint given"):
        resolve_checkpoint(None)


def test_unknown_name_lists_valid_names():
    with pytest.raises(CheckpointError, match="unknown checkpoint 'sam_vit_x'.*sam_vit_b"):
        resolve_checkpoint("sam_vit_x")


def test_verified_cache_hit_does_not_download(monkeypatch):
    entry = register(monkeypatch)
    cache_dir().mkdir(parents=True)
    (cache_dir() / entry.filename).write_bytes(PAYLOAD)
    forbid_download(monkeypatch)
    assert resolve_checkpoint(entry.name) == cache_dir() / entry.filename


def test_wrong_file_in_cache_fails_clearly(monkeypatch):
    entry = register(monkeypatch)
    cache_dir().mkdir(parents=True)
    wrong = cache_dir() / entry.filename
    wrong.write_bytes(b"not the checkpoint")
    forbid_download(monkeypatch)
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(entry.name)
    message = str(info.value)
    for needed in (str(wrong), PAYLOAD_MD5, hashlib.md5(b"not the checkpoint").hexdigest(), entry.url, "curl -L -o"):
        assert needed in message
    assert wrong.read_bytes() == b"not the checkpoint", "the user's file must not be deleted"


def test_download_from_server_into_cache(server, monkeypatch):
    base, served = server
    (served / "tiny.pth").write_bytes(PAYLOAD)
    entry = register(monkeypatch, url=f"{base}/tiny.pth")
    path = resolve_checkpoint(entry.name)
    assert path == cache_dir() / entry.filename
    assert path.read_bytes() == PAYLOAD
    assert cache_listing() == [entry.filename], "no temporary file may remain"
    # The second resolution is a verified cache hit.
    forbid_download(monkeypatch)
    assert resolve_checkpoint(entry.name) == path


def test_corrupt_download_leaves_nothing(server, monkeypatch):
    base, served = server
    (served / "tiny.pth").write_bytes(b"served but corrupted")
    entry = register(monkeypatch, url=f"{base}/tiny.pth")
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(entry.name)
    assert PAYLOAD_MD5 in str(info.value) and hashlib.md5(b"served but corrupted").hexdigest() in str(info.value)
    assert cache_listing() == []


class BrokenResponse:
    """A response that delivers one chunk and then fails, like a dropped connection."""

    def __init__(self, length: int):
        self.headers = {"Content-Length": str(length)}
        self.body = io.BytesIO(PAYLOAD[:1000])
        self.reads = 0

    def read(self, size=-1):
        self.reads += 1
        if self.reads > 1:
            raise ConnectionResetError("connection reset by peer")
        return self.body.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_interrupted_download_leaves_no_partial_file(monkeypatch):
    entry = register(monkeypatch)
    monkeypatch.setattr(checkpoints, "_urlopen", lambda url, timeout: BrokenResponse(len(PAYLOAD)))
    with pytest.raises(CheckpointError, match="connection reset"):
        resolve_checkpoint(entry.name)
    assert cache_listing() == []


def test_truncated_download_is_rejected_even_without_md5(monkeypatch):
    entry = register(monkeypatch, md5=None)

    class Truncated(BrokenResponse):
        def read(self, size=-1):
            return self.body.read(size)

    monkeypatch.setattr(checkpoints, "_urlopen", lambda url, timeout: Truncated(len(PAYLOAD)))
    with pytest.raises(CheckpointError, match=f"stopped after 1000 of {len(PAYLOAD)} bytes"):
        resolve_checkpoint(entry.name)
    assert cache_listing() == []


def test_offline_error_says_what_where_and_how(monkeypatch):
    entry = register(monkeypatch)

    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(checkpoints, "_urlopen", offline)
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(entry.name)
    message = str(info.value)
    target = cache_dir() / entry.filename
    assert entry.name in message and entry.url in message
    assert f"Looked in: {target}" in message
    assert f"mkdir -p {cache_dir()} && curl -L -o {target} {entry.url}" in message
    assert PAYLOAD_MD5 in message
    assert not target.exists()


def test_download_disabled(monkeypatch):
    entry = register(monkeypatch)
    forbid_download(monkeypatch)
    with pytest.raises(CheckpointError, match="downloading is disabled") as info:
        resolve_checkpoint(entry.name, download=False)
    assert entry.url in str(info.value)


def test_http_error_is_a_checkpoint_error(server, monkeypatch):
    base, _ = server
    entry = register(monkeypatch, url=f"{base}/missing.pth")
    with pytest.raises(CheckpointError, match="404"):
        resolve_checkpoint(entry.name)
    assert cache_listing() == []


def test_md5_less_entry_records_hash_and_detects_corruption(server, monkeypatch):
    base, served = server
    (served / "tiny.pth").write_bytes(PAYLOAD)
    entry = register(monkeypatch, url=f"{base}/tiny.pth", md5=None)
    with pytest.warns(UserWarning, match="no published md5"):
        path = resolve_checkpoint(entry.name)
    record = checkpoints.md5_record_path(path)
    assert not record.exists()  # recorded only once the file has loaded into its model
    checkpoints.confirm_loaded(path)
    assert record.read_text().split()[0] == PAYLOAD_MD5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process, not on every resolution
        assert resolve_checkpoint(entry.name) == path
    path.write_bytes(PAYLOAD[:-10] + b"corrupted!")
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(entry.name)
    assert str(record) in str(info.value) and PAYLOAD_MD5 in str(info.value) and str(path) in str(info.value)


def test_md5_less_file_placed_by_hand_is_trusted_then_recorded(monkeypatch):
    entry = register(monkeypatch, md5=None)
    cache_dir().mkdir(parents=True)
    placed = cache_dir() / entry.filename
    placed.write_bytes(PAYLOAD)
    forbid_download(monkeypatch)
    with pytest.warns(UserWarning, match="no published md5"):
        assert resolve_checkpoint(entry.name) == placed
    checkpoints.confirm_loaded(placed)
    assert checkpoints.md5_record_path(placed).read_text().split()[0] == PAYLOAD_MD5


def test_md5_less_first_copy_that_does_not_load_is_not_recorded(monkeypatch):
    import torch

    entry = register(monkeypatch, md5=None)
    cache_dir().mkdir(parents=True)
    placed = cache_dir() / entry.filename
    placed.write_bytes(PAYLOAD)  # not a torch file: a truncated download reads like this
    forbid_download(monkeypatch)
    with pytest.warns(UserWarning, match="no published md5"):
        path = resolve_checkpoint(entry.name)
    with pytest.raises(CheckpointError, match="cannot read"):
        checkpoints.load_state_dict_file(torch.nn.Linear(2, 2), path, "tiny")
    assert not checkpoints.md5_record_path(placed).exists()

    # The good copy that replaces it is the one recorded, once it has loaded.
    module = torch.nn.Linear(2, 2)
    torch.save(module.state_dict(), placed)
    path = resolve_checkpoint(entry.name)
    checkpoints.load_state_dict_file(torch.nn.Linear(2, 2), path, "tiny")
    assert checkpoints.md5_record_path(placed).read_text().split()[0] == checkpoints.file_md5(placed)


def test_md5_is_computed_once_per_file_version(tmp_path, monkeypatch):
    calls = []
    real_md5 = hashlib.md5

    def counting_md5(*args, **kwargs):
        calls.append(1)
        return real_md5(*args, **kwargs)

    monkeypatch.setattr(checkpoints.hashlib, "md5", counting_md5)
    path = tmp_path / "weights.bin"
    path.write_bytes(PAYLOAD)
    assert file_md5(path) == PAYLOAD_MD5
    assert file_md5(path) == PAYLOAD_MD5
    assert len(calls) == 1
    changed_md5 = real_md5(PAYLOAD + b"x").hexdigest()
    path.write_bytes(PAYLOAD + b"x")  # new size: hashed again
    assert file_md5(path) == changed_md5
    assert len(calls) == 2


def test_list_checkpoints_reports_presence_and_md5(monkeypatch):
    good = register(monkeypatch, name="tiny_good", filename="good.pth")
    bad = register(monkeypatch, name="tiny_bad", filename="bad.pth")
    cache_dir().mkdir(parents=True)
    (cache_dir() / good.filename).write_bytes(PAYLOAD)
    (cache_dir() / bad.filename).write_bytes(b"wrong")
    rows = {row["name"]: row for row in list_checkpoints(verify=True)}
    assert set(checkpoints.CHECKPOINTS) == set(rows)
    assert rows["tiny_good"]["present"] and rows["tiny_good"]["md5_ok"] is True
    assert rows["tiny_bad"]["present"] and rows["tiny_bad"]["md5_ok"] is False
    assert not rows["sam_vit_b"]["present"] and rows["sam_vit_b"]["md5_ok"] is None
    assert rows["tiny_good"]["path"] == str(cache_dir() / "good.pth")
    assert {row["md5_ok"] for row in list_checkpoints(verify=False)} == {None}


def test_main_lists_names_and_presence(monkeypatch, capsys):
    entry = register(monkeypatch)
    cache_dir().mkdir(parents=True)
    (cache_dir() / entry.filename).write_bytes(PAYLOAD)
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_name = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(by_name) == set(checkpoints.CHECKPOINTS)
    assert by_name["tiny_test"][2] == "yes" and by_name["sam_vit_h"][2] == "no"
    assert by_name["cotracker3_offline"][1] == "tracker"

    (cache_dir() / entry.filename).write_bytes(b"corrupted")
    assert main(["--verify", "--component", "sam"]) == 1
    captured = capsys.readouterr()
    rows = {line.split()[0]: line.split() for line in captured.out.splitlines()[1:]}
    assert rows["tiny_test"][3] == "WRONG" and "cotracker3_offline" not in rows
    assert "do not match" in captured.err
    # How to reset it: delete the file (it has a published md5: no record) and download it again.
    assert f"rm {cache_dir() / entry.filename} && sampt checkpoints --download tiny_test" in captured.err


def test_main_downloads_named_checkpoints(server, monkeypatch, capsys):
    base, served = server
    (served / "tiny.pth").write_bytes(PAYLOAD)
    entry = register(monkeypatch, url=f"{base}/tiny.pth")
    assert main(["--download", entry.name]) == 0
    assert (cache_dir() / entry.filename).read_bytes() == PAYLOAD
    assert str(cache_dir() / entry.filename) in capsys.readouterr().out

    register(monkeypatch, name="tiny_gone", filename="gone.pth", url=f"{base}/gone.pth")
    assert main(["--download", "tiny_gone"]) == 1
    assert "tiny_gone" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--download", "no_such_checkpoint"])
