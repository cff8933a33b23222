"""pods/ckptimage.py: the manifest of a checkpoint image, and its refusals.

`pod restore` hands an image to CRIU running as host root, so every test
here but the round trips attacks read_manifest() with one kind of bad image
(missing, incomplete, changed, crafted, of another format) and asserts the
exact one-line message. No root, no pod: a plain tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest

from pods import ckptimage
from pods.ckptimage import FORMAT, MANIFEST, ImageError, read_manifest, write_manifest

BIG = 2 * (1 << 20) + 12345          # more than two hashing chunks


def make_image(base: Path) -> Path:
    """An image as `pod checkpoint` writes it: two trees and our own files."""
    d = base / "img"
    for tree, pid in (("tree-1", 1), ("tree-2", 5)):
        (d / tree).mkdir(parents=True)
        (d / tree / f"core-{pid}.img").write_bytes(f"core of {pid}\n".encode() * 50)
        (d / tree / f"pages-{pid}.img").write_bytes(bytes(range(256)) * (BIG // 256))
        (d / tree / "dump.log").write_text(f"(00.000001) dumping {pid}\n")
    (d / "policy.toml").write_text('[pod]\nname = "web"\n')
    (d / "pod.json").write_text('{"name": "web"}\n')
    return d


@pytest.fixture
def img(tmp_path) -> Path:
    d = make_image(tmp_path)
    write_manifest(d, {"pod": "web", "criu": "4.1"})
    return d


def refusal(d: Path) -> str:
    with pytest.raises(ImageError) as caught:
        read_manifest(d)
    message = str(caught.value)
    assert "\n" not in message
    return message


@contextmanager
def no_hang(seconds: int = 20):
    """Turn a blocked open (a fifo without O_NONBLOCK) into a failure."""
    def timeout(*a):
        raise TimeoutError(f"read_manifest blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def edit_manifest(d: Path, change) -> None:
    """Rewrite the manifest through ``change(dict)``, hashes untouched."""
    m = json.loads((d / MANIFEST).read_text())
    change(m)
    (d / MANIFEST).write_text(json.dumps(m))


# -- round trips ---------------------------------------------------------------


def test_round_trip(img):
    """What write_manifest returns is what read_manifest verifies and returns."""
    m = read_manifest(img)
    assert m == write_manifest(img, {"pod": "web", "criu": "4.1"}) | {"created": m["created"]}
    assert m["format"] == FORMAT == 1 and m["meta"] == {"pod": "web", "criu": "4.1"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["created"])
    assert list(m["files"]) == [
        "pod.json", "policy.toml",
        "tree-1/core-1.img", "tree-1/dump.log", "tree-1/pages-1.img",
        "tree-2/core-5.img", "tree-2/dump.log", "tree-2/pages-5.img"]
    for rel, entry in m["files"].items():
        data = (img / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert m["files"]["tree-1/pages-1.img"]["size"] > 2 * (1 << 20)


def test_empty_files_and_deep_directories_round_trip(tmp_path):
    d = tmp_path / "img"
    (d / "a" / "b" / "c").mkdir(parents=True)
    (d / "a" / "b" / "c" / "empty.img").write_bytes(b"")
    (d / "top").write_bytes(b"x")
    m = write_manifest(d, {})
    assert read_manifest(d) == m
    assert m["files"]["a/b/c/empty.img"] == {"sha256": hashlib.sha256(b"").hexdigest(), "size": 0}


def test_write_manifest_is_atomic_and_leaves_no_temp_file(img):
    """The manifest is renamed into place: no temp file left, bytes parse."""
    assert sorted(p.name for p in img.iterdir()) == [
        MANIFEST, "pod.json", "policy.toml", "tree-1", "tree-2"]
    m = json.loads((img / MANIFEST).read_bytes())
    assert m == read_manifest(img)
    assert stat.S_IMODE((img / MANIFEST).stat().st_mode) == 0o600


def test_write_manifest_syncs_the_temp_file_before_the_rename_and_the_directory_after(
        img, monkeypatch):
    calls = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst, **kw):
        calls.append(("rename", src, dst))
        real_rename(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    write_manifest(img, {})
    assert calls[-3:] == [("fsync", str(img / (MANIFEST + ".tmp"))),
                          ("rename", MANIFEST + ".tmp", MANIFEST),
                          ("fsync", str(img))]
    # and every listed file and directory before that
    assert {c[1] for c in calls[:-3]} >= {str(img / "tree-1"), str(img / "tree-2/pages-5.img")}


def test_a_crash_before_the_rename_leaves_the_previous_manifest(img, monkeypatch):
    """A write that fails half-way leaves the old manifest, which still
    verifies, and no temp file."""
    before = (img / MANIFEST).read_bytes()

    def crash(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(ImageError) as caught:
        write_manifest(img, {"new": True})
    assert str(caught.value) == f"{img}/{MANIFEST}: cannot write (No space left on device)"
    assert (img / MANIFEST).read_bytes() == before
    assert not (img / (MANIFEST + ".tmp")).exists()
    monkeypatch.undo()
    assert read_manifest(img)["meta"] == {"pod": "web", "criu": "4.1"}


def test_a_stale_temp_file_is_replaced_not_listed(img):
    (img / (MANIFEST + ".tmp")).write_text("half a manif")
    m = write_manifest(img, {})
    assert MANIFEST + ".tmp" not in m["files"]
    assert not (img / (MANIFEST + ".tmp")).exists()
    assert read_manifest(img) == m


def test_write_manifest_refuses_what_read_manifest_would(tmp_path):
    """A manifest that was written always verifies: what the reader refuses,
    the writer refuses too."""
    d = make_image(tmp_path)
    os.symlink("pages-1.img", d / "tree-1" / "link.img")
    with pytest.raises(ImageError) as caught:
        write_manifest(d, {})
    assert str(caught.value) == (f"{d}/tree-1/link.img: a symbolic link "
                                 "(an image holds only regular files and directories)")
    os.unlink(d / "tree-1" / "link.img")
    (d / "tree-3").mkdir()
    with pytest.raises(ImageError) as caught:
        write_manifest(d, {})
    assert str(caught.value) == (f"{d}/tree-3: an empty directory (an image holds only files "
                                 "and the directories that lead to them)")
    assert not (d / MANIFEST).exists()


def test_write_manifest_meta_must_be_a_json_object(tmp_path):
    d = make_image(tmp_path)
    with pytest.raises(TypeError):
        write_manifest(d, ["not", "a", "dict"])
    with pytest.raises(TypeError):
        write_manifest(d, {"x": object()})
    assert not (d / MANIFEST).exists()


# -- the directory and the manifest file ---------------------------------------


def test_missing_directory(tmp_path):
    assert refusal(tmp_path / "nope") == f"{tmp_path}/nope: no such directory"


def test_a_file_is_not_an_image_directory(tmp_path):
    (tmp_path / "f").write_text("")
    assert refusal(tmp_path / "f") == f"{tmp_path}/f: not a directory"


def test_directory_without_manifest(tmp_path):
    d = make_image(tmp_path)
    assert refusal(d) == f"{d}: not an image directory (no manifest.json)"


def test_manifest_that_is_a_symbolic_link(img, tmp_path):
    """A manifest reached through a link is refused, even a valid one."""
    os.rename(img / MANIFEST, tmp_path / "real.json")
    os.symlink(tmp_path / "real.json", img / MANIFEST)
    assert refusal(img) == (f"{img}/manifest.json: a symbolic link "
                            "(an image holds only regular files and directories)")


def test_manifest_that_is_a_fifo_does_not_hang(img):
    os.unlink(img / MANIFEST)
    os.mkfifo(img / MANIFEST)
    with no_hang():
        assert refusal(img) == (f"{img}/manifest.json: a fifo "
                                "(an image holds only regular files and directories)")


def test_huge_manifest_is_refused_before_reading(img):
    with open(img / MANIFEST, "r+b") as f:
        f.truncate(16 * (1 << 20) + 1)
    assert refusal(img) == f"{img}/manifest.json: 16777217 bytes, too large for a manifest"


# -- the manifest's JSON and fields --------------------------------------------


def test_half_written_manifest(img):
    """A manifest cut mid-write (what a non-atomic write leaves) is refused,
    naming the line where it breaks."""
    text = (img / MANIFEST).read_text()
    cut = text.index('"sha256": "') + len('"sha256": "') + 10
    (img / MANIFEST).write_text(text[:cut])
    line = text[:cut].count("\n") + 1
    assert line > 3
    assert refusal(img) == f"{img}/manifest.json: not valid JSON (line {line})"


def test_manifest_cut_between_lines(img):
    text = (img / MANIFEST).read_text()
    (img / MANIFEST).write_text("\n".join(text.split("\n")[:3]) + "\n")
    assert refusal(img) == f"{img}/manifest.json: not valid JSON (line 4)"


def test_empty_manifest(img):
    (img / MANIFEST).write_bytes(b"")
    assert refusal(img) == f"{img}/manifest.json: not valid JSON (line 1)"


def test_manifest_not_utf8(img):
    (img / MANIFEST).write_bytes(b'{"format": "\xff"}')
    assert refusal(img) == f"{img}/manifest.json: not valid JSON (not UTF-8)"


def test_duplicate_key_is_refused(img):
    """Two "files" keys: the parser would keep one silently, another reader
    the other one."""
    text = (img / MANIFEST).read_text()
    (img / MANIFEST).write_text(text.replace('"files": {', '"files": {}, "files": {', 1))
    assert refusal(img) == f'{img}/manifest.json: key "files" appears twice'


def test_nan_is_not_json(img):
    edit_manifest(img, lambda m: m["meta"].update(x=float("nan")))
    assert refusal(img) == f"{img}/manifest.json: not valid JSON (NaN)"


@pytest.mark.parametrize("value, kind", [([], "an array"), ("{}", "a string"), (7, "a number"),
                                         (None, "null"), (True, "a boolean")])
def test_manifest_that_is_not_an_object(img, value, kind):
    (img / MANIFEST).write_text(json.dumps(value))
    assert refusal(img) == f"{img}/manifest.json: holds {kind}, a manifest is a JSON object"


def test_other_format(img):
    """A manifest of a later format is refused by its version, whatever
    else it holds."""
    (img / MANIFEST).write_text('{"format": 7, "everything": "else"}')
    assert refusal(img) == f"{img}/manifest.json: format 7, this Pea-Pod reads format 1"


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("format"), 'no "format" field'),
    (lambda m: m.update(format="1"), '"format" must be an integer, not a string'),
    (lambda m: m.update(format=True), '"format" must be an integer, not a boolean'),
    (lambda m: m.update(format=1.0), '"format" must be an integer, not a number'),
    (lambda m: m.pop("files"), 'no "files" field'),
    (lambda m: m.pop("created"), 'no "created" field'),
    (lambda m: m.pop("meta"), 'no "meta" field'),
    (lambda m: m.update(signed=True), 'unknown field "signed"'),
    (lambda m: m.update(created=0), '"created" must be a string, not a number'),
    (lambda m: m.update(created="yesterday"),
     '"created" must be a UTC time like 2026-12-01T21:36:20Z'),
    (lambda m: m.update(created="2026-13-01T00:00:00Z"),
     '"created" must be a UTC time like 2026-12-01T21:36:20Z'),
    (lambda m: m.update(meta=[]), '"meta" must be an object, not an array'),
    (lambda m: m.update(files=list(m["files"])), '"files" must be an object, not an array'),
    (lambda m: m["files"].update({"pod.json": "abc"}),
     'entry "pod.json" must be an object, not a string'),
    (lambda m: m["files"]["pod.json"].pop("size"), 'entry "pod.json" has no "size" field'),
    (lambda m: m["files"]["pod.json"].pop("sha256"), 'entry "pod.json" has no "sha256" field'),
    (lambda m: m["files"]["pod.json"].update(mode=0o644),
     'entry "pod.json" has an unknown field "mode"'),
    (lambda m: m["files"]["pod.json"].update(sha256="abc"),
     '"sha256" of "pod.json" must be 64 lower-case hex digits'),
    (lambda m: m["files"]["pod.json"].update(sha256=m["files"]["pod.json"]["sha256"].upper()),
     '"sha256" of "pod.json" must be 64 lower-case hex digits'),
    (lambda m: m["files"]["pod.json"].update(sha256=m["files"]["pod.json"]["sha256"] + "\n"),
     '"sha256" of "pod.json" must be 64 lower-case hex digits'),
    (lambda m: m["files"]["pod.json"].update(sha256=12),
     '"sha256" of "pod.json" must be 64 lower-case hex digits'),
    (lambda m: m["files"]["pod.json"].update(size=-1),
     '"size" of "pod.json" must be a non-negative integer'),
    (lambda m: m["files"]["pod.json"].update(size="16"),
     '"size" of "pod.json" must be a non-negative integer'),
    (lambda m: m["files"]["pod.json"].update(size=16.0),
     '"size" of "pod.json" must be a non-negative integer'),
    (lambda m: m["files"]["pod.json"].update(size=True),
     '"size" of "pod.json" must be a non-negative integer'),
])
def test_fields_of_the_wrong_type(img, change, message):
    """Every field is checked for its type before any file is touched."""
    edit_manifest(img, change)
    assert refusal(img) == f"{img}/manifest.json: {message}"


@pytest.mark.parametrize("path, problem", [
    ("../outside", 'a path with a ".." component'),
    ("tree-1/../../outside", 'a path with a ".." component'),
    ("/etc/passwd", "an absolute path (paths are relative to the image directory)"),
    ("a//b", "a path with an empty component"),
    ("tree-1/", "a path with an empty component"),
    ("./pod.json", 'a path with a "." component'),
    ("", "an empty path"),
    ("a\0b", "a path with a NUL character"),
    ("manifest.json", "the manifest itself"),
])
def test_manifest_listing_a_path_outside_the_image(img, tmp_path, path, problem):
    """A crafted manifest names a file outside the image (one that exists,
    with its true hash): refused by the path alone, nothing is opened."""
    outside = tmp_path / "outside"
    outside.write_text("secret\n")
    entry = {"sha256": hashlib.sha256(b"secret\n").hexdigest(), "size": 7}
    edit_manifest(img, lambda m: m["files"].update({path: entry}))
    assert refusal(img) == f"{img}/manifest.json: lists {json.dumps(path)}, {problem}"


# -- the tree against the manifest ---------------------------------------------


def test_flipped_byte(img):
    """One bit changed in the last hashing chunk of a big file."""
    p = img / "tree-1" / "pages-1.img"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01
    p.write_bytes(data)
    assert refusal(img) == (f"{img}/tree-1/pages-1.img: sha256 mismatch "
                            "(the image was changed after the checkpoint)")


def test_changed_small_file_of_ours(img):
    (img / "policy.toml").write_text('[pod]\nname = "WEB"\n')
    assert refusal(img) == (f"{img}/policy.toml: sha256 mismatch "
                            "(the image was changed after the checkpoint)")


def test_truncated_file(img):
    p = img / "tree-2" / "pages-5.img"
    size = p.stat().st_size
    os.truncate(p, 4096)
    assert refusal(img) == (f"{img}/tree-2/pages-5.img: 4096 bytes, the manifest says {size} "
                            "(truncated or changed after the checkpoint)")


def test_sizes_are_checked_before_any_hashing(img, monkeypatch):
    """The last file in order is truncated: its size is refused before a
    single file is hashed."""
    def no_hashing(*a, **kw):
        raise AssertionError("hashed before every size was checked")

    monkeypatch.setattr(ckptimage, "_hash", no_hashing)
    os.truncate(img / "tree-2" / "pages-5.img", 0)
    assert refusal(img).startswith(f"{img}/tree-2/pages-5.img: 0 bytes, the manifest says ")


def test_file_removed(img):
    os.unlink(img / "tree-2" / "core-5.img")
    assert refusal(img) == f"{img}/tree-2/core-5.img: listed in the manifest but missing"


def test_tree_removed(img):
    """A copy that lost a whole tree: the first of its files is named."""
    for p in (img / "tree-2").iterdir():
        p.unlink()
    (img / "tree-2").rmdir()
    assert refusal(img) == f"{img}/tree-2/core-5.img: listed in the manifest but missing"


@pytest.mark.parametrize("rel", ["x", "tree-1/extra.img", "tree-2/zzz"])
def test_extra_file(img, rel):
    (img / rel).write_bytes(b"")
    assert refusal(img) == f"{img}/{rel}: not listed in the manifest"


def test_extra_directory(img):
    """An unlisted directory, empty or not, is an unlisted entry."""
    (img / "tree-3").mkdir()
    assert refusal(img) == f"{img}/tree-3: not listed in the manifest"
    (img / "tree-3" / "core-9.img").write_bytes(b"core")
    assert refusal(img) == f"{img}/tree-3: not listed in the manifest"
    os.unlink(img / "tree-3" / "core-9.img")
    os.rmdir(img / "tree-3")
    (img / "tree-1" / "sub").mkdir()
    assert refusal(img) == f"{img}/tree-1/sub: not listed in the manifest"


def test_directory_where_the_manifest_lists_a_file(img):
    os.unlink(img / "pod.json")
    (img / "pod.json").mkdir()
    (img / "pod.json" / "x").write_text("")
    assert refusal(img) == f"{img}/pod.json: a directory, the manifest lists a file"


def test_extra_file_with_a_newline_in_its_name_gives_one_line(img):
    name = str(img / "a\nb")
    Path(name).write_text("")
    assert refusal(img) == ascii(name) + ": not listed in the manifest"


def test_symlink_to_a_file_with_the_same_content(img, tmp_path):
    """The link's target holds exactly the listed bytes: still refused, CRIU
    would follow the link and its target may change after the check."""
    p = img / "tree-1" / "pages-1.img"
    copy = tmp_path / "copy.img"
    copy.write_bytes(p.read_bytes())
    p.unlink()
    os.symlink(copy, p)
    assert refusal(img) == (f"{img}/tree-1/pages-1.img: a symbolic link "
                            "(an image holds only regular files and directories)")


def test_relative_symlink_inside_the_image(img):
    p = img / "tree-1" / "dump.log"
    os.rename(p, img / "tree-1" / "dump.real")
    edit_manifest(img, lambda m: m["files"].update(
        {"tree-1/dump.real": m["files"]["tree-1/dump.log"]}))
    os.symlink("dump.real", p)
    assert refusal(img) == (f"{img}/tree-1/dump.log: a symbolic link "
                            "(an image holds only regular files and directories)")


def test_symlinked_directory(img, tmp_path):
    """tree-2 replaced by a link to an identical copy outside the image."""
    os.rename(img / "tree-2", tmp_path / "tree-2")
    os.symlink(tmp_path / "tree-2", img / "tree-2")
    assert refusal(img) == (f"{img}/tree-2: a symbolic link "
                            "(an image holds only regular files and directories)")


def test_unlisted_dangling_symlink(img):
    os.symlink("/nonexistent", img / "tree-1" / "zz")
    assert refusal(img) == (f"{img}/tree-1/zz: a symbolic link "
                            "(an image holds only regular files and directories)")


def test_fifo_in_place_of_a_file(img):
    os.unlink(img / "tree-1" / "dump.log")
    os.mkfifo(img / "tree-1" / "dump.log")
    with no_hang():
        assert refusal(img) == (f"{img}/tree-1/dump.log: a fifo "
                                "(an image holds only regular files and directories)")


def swap_after_scan(monkeypatch, swap):
    """Run ``swap()`` between the scan of the tree and the hashing: an
    attacker racing the verification."""
    real = ckptimage._scan

    def scan(*a, **kw):
        result = real(*a, **kw)
        swap()
        return result

    monkeypatch.setattr(ckptimage, "_scan", scan)


def test_file_swapped_for_a_symlink_after_the_scan(img, tmp_path, monkeypatch):
    """The hashing opens refuse the link themselves (O_NOFOLLOW)."""
    p = img / "tree-1" / "core-1.img"
    copy = tmp_path / "copy.img"
    copy.write_bytes(p.read_bytes())

    def swap():
        p.unlink()
        os.symlink(copy, p)

    swap_after_scan(monkeypatch, swap)
    assert refusal(img) == (f"{img}/tree-1/core-1.img: a symbolic link "
                            "(an image holds only regular files and directories)")


def test_directory_swapped_for_a_symlink_after_the_scan(img, tmp_path, monkeypatch):
    """Every directory on the way is opened O_NOFOLLOW too, not only the file."""
    def swap():
        os.rename(img / "tree-2", tmp_path / "tree-2")
        os.symlink(tmp_path / "tree-2", img / "tree-2")

    swap_after_scan(monkeypatch, swap)
    assert refusal(img) == (f"{img}/tree-2: a symbolic link "
                            "(an image holds only regular files and directories)")


def test_file_swapped_for_a_fifo_after_the_scan_does_not_hang(img, monkeypatch):
    p = img / "tree-1" / "core-1.img"

    def swap():
        p.unlink()
        os.mkfifo(p)

    swap_after_scan(monkeypatch, swap)
    with no_hang():
        assert refusal(img) == (f"{img}/tree-1/core-1.img: a fifo "
                                "(an image holds only regular files and directories)")


def test_file_truncated_after_the_scan(img, monkeypatch):
    """The size is checked again on the open file, not only at the scan."""
    p = img / "tree-1" / "core-1.img"
    size = p.stat().st_size
    swap_after_scan(monkeypatch, lambda: os.truncate(p, 1))
    assert refusal(img) == (f"{img}/tree-1/core-1.img: 1 bytes, the manifest says {size} "
                            "(truncated or changed after the checkpoint)")


def test_first_problem_in_path_order_is_reported(img):
    os.truncate(img / "tree-2" / "dump.log", 0)
    (img / "tree-1" / "zz").write_text("")
    assert refusal(img) == f"{img}/tree-1/zz: not listed in the manifest"
