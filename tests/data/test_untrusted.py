"""``data.untrusted``: what a reader may open (regular files, links inside their folder), bounded gzip
counting, one-line messages and native stderr kept off the terminal. Each refusal asserted whole."""

from __future__ import annotations

import gzip
import os
import socket
import threading
import zlib

import pytest

from data import untrusted
from data.untrusted import UntrustedFileError, check_regular, gzip_length, native_stderr_captured, one_line


@pytest.fixture(autouse=True)
def inside_policy():
    saved = untrusted.link_policy()
    untrusted.set_link_policy("inside")
    yield
    untrusted.set_link_policy(saved)


def refused(path, message: str, **kwargs) -> None:
    with pytest.raises(UntrustedFileError) as e:
        check_regular(path, **kwargs)
    assert str(e.value) == message


def test_one_line_escapes_every_control_character():
    assert one_line("plain text: ü, 中, tab-free") == "plain text: ü, 中, tab-free"
    assert one_line("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert one_line("\x00\x1b[31mred\x7f\x85\x9f") == "\\x00\\x1b[31mred\\x7f\\x85\\x9f"
    assert one_line("line\u2028sep\u2029") == "line\\u2028sep\\u2029"
    assert one_line("\x1f \x20 \xa0") == "\\x1f \x20 \xa0"  # space and no-break space stay
    assert one_line(42) == "42"


def test_the_link_policy_is_inside_or_follow():
    untrusted.set_link_policy("follow")
    assert untrusted.link_policy() == "follow"
    with pytest.raises(ValueError) as e:
        untrusted.set_link_policy("all")
    assert str(e.value) == "link policy 'all'; expected one of inside, follow"
    assert untrusted.link_policy() == "follow"


def test_regular_files_and_folders(tmp_path):
    f = tmp_path / "a.nii"
    f.write_bytes(b"x" * 7)
    assert check_regular(f).st_size == 7
    refused(tmp_path, f"{tmp_path}: a folder, not a regular file")
    assert check_regular(tmp_path, allow_dir=True).st_ino == os.stat(tmp_path).st_ino
    refused(tmp_path / "gone", f"{tmp_path / 'gone'}: no such file or folder")
    os.mkfifo(tmp_path / "fifo")
    refused(tmp_path / "fifo", f"{tmp_path / 'fifo'}: a pipe, not a regular file", allow_dir=True)
    refused("/dev/null", "/dev/null: a device, not a regular file")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
        refused(tmp_path / "sock", f"{tmp_path / 'sock'}: a socket or special file, not a regular file")


def test_links_inside_their_folder_open_and_links_out_only_under_follow(tmp_path):
    inside, outside = tmp_path / "study", tmp_path / "elsewhere"
    (inside / "sub").mkdir(parents=True)
    outside.mkdir()
    (inside / "sub" / "real.nii").write_bytes(b"abc")
    (outside / "secret.nii").write_bytes(b"secret")
    (inside / "ok.nii").symlink_to("sub/real.nii")
    (inside / "out.nii").symlink_to(outside / "secret.nii")
    (inside / "sub" / "up.nii").symlink_to("../sub/real.nii")
    (inside / "self").symlink_to(".")
    assert check_regular(inside / "ok.nii").st_size == 3
    assert check_regular(inside / "sub" / "up.nii").st_size == 3  # default folder: the link's own
    refused(inside / "sub" / "up.nii", f"{inside / 'sub' / 'up.nii'}: a link to a file outside its folder; name the "
            "real path or copy the file in", folder=inside / "sub" / "deeper")
    assert check_regular(inside / "sub" / "up.nii", folder=inside).st_size == 3
    assert check_regular(inside / "self", allow_dir=True)  # a link to its own folder
    refused(inside / "out.nii", f"{inside / 'out.nii'}: a link to a file outside its folder; name the real path or copy "
            "the file in")
    refused(inside / "out.nii", f"{inside / 'out.nii'}: a link to a file outside its folder; name the real path or copy "
            "the file in", folder=inside)
    (inside / "dev").symlink_to("/dev/zero")
    untrusted.set_link_policy("follow")
    assert check_regular(inside / "out.nii").st_size == 6
    refused(inside / "dev", f"{inside / 'dev'}: a device, not a regular file")  # followed, still not a file


def test_broken_links_name_git_annex_when_that_is_where_they_point(tmp_path):
    (tmp_path / "gone.nii").symlink_to("missing.nii")
    refused(tmp_path / "gone.nii", f"{tmp_path / 'gone.nii'}: a broken link")
    (tmp_path / ".git" / "annex" / "objects").mkdir(parents=True)
    (tmp_path / "T1w.nii.gz").symlink_to(".git/annex/objects/Xk/SHA256E-s1--abc.nii.gz")
    refused(tmp_path / "T1w.nii.gz", f"{tmp_path / 'T1w.nii.gz'}: a broken link (a git-annex file whose content is not "
            "here: `datalad get` or `git annex get` it)")


def test_gzip_length_counts_members_and_stops_past_the_cap(tmp_path, monkeypatch):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"a" * 1000))
    assert gzip_length(path, 10**6) == 1000
    path.write_bytes(gzip.compress(b"a" * 1000) + gzip.compress(b"b" * 500))  # two members: 1500, as gzip reads
    assert gzip_length(path, 10**6) == 1500
    path.write_bytes(gzip.compress(b"a" * 1000) + b"\0" * 64)  # zero padding after the last member
    assert gzip_length(path, 10**6) == 1000
    path.write_bytes(gzip.compress(b""))
    assert gzip_length(path, 10**6) == 0
    path.write_bytes(b"")
    assert gzip_length(path, 10**6) == 0
    monkeypatch.setattr(untrusted, "CHUNK", 100)  # small steps: the cap stops the count early
    path.write_bytes(gzip.compress(b"a" * 10_000))
    assert 250 < gzip_length(path, 250) <= 350
    assert gzip_length(path, 200) == 300  # exactly at the cap after a step: counting goes on, so a bomb shows
    assert gzip_length(path, 10**6) == 10_000
    path.write_bytes(gzip.compress(b"a" * 1000) + gzip.compress(b"b" * 500))
    assert gzip_length(path, 10**6) == 1500
    data = gzip.compress(os.urandom(5000))
    path.write_bytes(data[:-12])
    with pytest.raises(EOFError, match=r"^the gzip stream ends before its end marker \(truncated\)$"):
        gzip_length(path, 10**6)
    path.write_bytes(data[:10] + b"\xff" * 50)
    with pytest.raises(zlib.error):
        gzip_length(path, 10**6)
    path.write_bytes(gzip.compress(b"a" * 1000) + b"XX")  # trailing bytes that are not zero padding
    with pytest.raises(zlib.error):
        gzip_length(path, 10**6)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(zlib.error):
        gzip_length(path, 10**6)


def test_native_stderr_is_captured_in_the_main_thread_only(capfd):
    with native_stderr_captured() as lines:
        os.write(2, b"ITK warning: one\nsecond line\n")
    assert lines == ["ITK warning: one", "second line"]
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"  # fd 2 is back
    seen = []

    def worker():
        with native_stderr_captured() as got:
            os.write(2, b"from a thread\n")
        seen.append(got)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [[]] and capfd.readouterr().err == "from a thread\n"
    with native_stderr_captured() as lines:
        os.write(2, b"x" * (70 * 1024))
    assert len(lines) == 1 and len(lines[0]) == 64 * 1024  # at most 64 KiB kept
