"""Atomic whole-file writes (edgereg.files): the target is the old file or the whole new one, and
nothing is left behind when a write fails."""

from __future__ import annotations

import pytest

from edgereg.errors import OutputError
from edgereg.files import atomic_path, atomic_replace, atomic_write


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "out.bin")


def test_atomic_replace_writes_bytes_or_chunks_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    assert atomic_replace(target, b"old") == target and target.read_bytes() == b"old"
    atomic_replace(target, (b"a", b"", b"bc"), sync_folder=True)
    assert target.read_bytes() == b"abc" and leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def chunks():
        yield b"half"
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        atomic_replace(target, chunks())
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_atomic_path_commits_only_a_block_that_ends_normally(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_path(target, temp_name="out.bin.partial") as temp:
        assert temp == tmp_path / "out.bin.partial" and not target.exists()
        temp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and leftovers(tmp_path) == []
    with pytest.raises(ValueError), atomic_path(target) as temp:
        temp.write_bytes(b"rejected")
        raise ValueError("the check failed: nothing is written")
    assert target.read_bytes() == b"new" and leftovers(tmp_path) == []


def test_atomic_write_raises_a_typed_error_naming_the_file_and_the_fix(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "x.json", b"{}")
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match="a folder is in the way"):
        atomic_write(tmp_path / "folder", b"{}")


def test_atomic_write_into_a_folder_it_may_not_write_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    """The folder refuses the file (as a read-only folder does for a non-root user; CI runs as root,
    where chmod would not stop it, so the refusal is injected at the open)."""
    import builtins

    real_open = builtins.open

    def refusing_open(file, mode="r", *args, **kwargs):
        if "w" in mode and str(file).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    folder = tmp_path / "ro"
    folder.mkdir()
    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(OutputError, match="permission denied|Permission denied") as raised:
        atomic_write(folder / "x.json", b"{}", fix="choose another folder")
    monkeypatch.undo()
    assert "x.json" in str(raised.value) and "choose another folder" in str(raised.value)
    assert list(folder.iterdir()) == []
