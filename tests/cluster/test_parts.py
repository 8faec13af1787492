"""The exactly-once state of a distributed run: atomic parts, a manifest, an idempotent merge."""

from __future__ import annotations

import errno
import json

import pytest
from scoring_files import read_csv

from edgereg.batch.encoding import encode_row, errors_path_for
from edgereg.batch.writers import CsvRowWriter, open_rows
from edgereg.cluster.parts import MANIFEST, PartStore, error_line, state_dir_for
from edgereg.errors import EdgeregError

COLUMNS = ("path", "v", "flags")
IDENTITY = {"model_sha256": "abc", "columns": list(COLUMNS), "format": "csv"}


def row(key, value, flags=()):
    return {"path": key, "v": value, "flags": flags}


def rows_of(*rows, fmt="csv"):
    """``(key, line)`` pairs, encoded as the engine encodes them."""
    return [(r["path"], encode_row(r, fmt)) for r in rows]


def errors_of(*pairs):
    return [(key, error_line(key, reason)) for key, reason in pairs]



def local_bytes(tmp_path, rows):
    """What the local engine's writer makes of these rows."""
    out = tmp_path / "reference.csv"
    with open_rows(out, COLUMNS) as writer:
        for r in rows:
            writer.write(r)
    return out.read_bytes()


def test_merge_orders_by_position_and_writes_what_the_local_writer_writes(tmp_path):
    out = tmp_path / "preds.csv"
    store = PartStore.open(out, IDENTITY, columns=COLUMNS)
    rows = [row(f"k{i}", i / 3, ("out_of_range",) if i == 2 else ()) for i in range(6)]
    rows[4]["v"] = float("nan")
    store.commit(rows_of(*rows[3:]), errors_of(("bad,1", "empty file (0 bytes)")))
    store.commit(rows_of(*rows[:3]))
    position_of = {f"k{i}": i for i in range(6)} | {"bad,1": 3}
    assert store.merge(out, columns=COLUMNS, position_of=position_of) == (6, 1)
    first = out.read_bytes()
    assert first == local_bytes(tmp_path, rows)  # floats exact, NaN and flags as the local engine writes them
    assert read_csv(errors_path_for(out)) == [{"path": "bad,1", "reason": "empty file (0 bytes)"}]
    assert store.merge(out, columns=COLUMNS, position_of=position_of) == (6, 1)  # idempotent
    assert out.read_bytes() == first
    # unordered: commit order
    store.merge(out, columns=COLUMNS, position_of=None)
    assert [r["path"] for r in read_csv(out)] == ["k3", "k4", "k5", "k0", "k1", "k2"]


def test_resume_skips_committed_rows_retries_errors_and_drops_orphans(tmp_path):
    out = tmp_path / "preds.jsonl"
    identity = dict(IDENTITY, format="jsonl")
    store = PartStore.open(out, identity, columns=COLUMNS)
    store.commit(rows_of(row("a", 1.0), fmt="jsonl"), errors_of(("b", "truncated image")))
    root = state_dir_for(out)
    (root / "g0001-000002.part").write_bytes(b'{"keys": ["c"]}\n')  # renamed, never in the manifest
    (root / ".g0001-000003.part.tmp").write_bytes(b"{half")
    with open(root / MANIFEST, "ab") as manifest:
        manifest.write(b'{"name": "g0001-0000')  # a commit cut short

    with pytest.raises(EdgeregError, match="unfinished --engine ray run.*--resume"):
        PartStore.open(out, identity, columns=COLUMNS)
    resumed = PartStore.open(out, identity, columns=COLUMNS, resume=True)
    assert resumed.generation == 2 and sorted(p.name for p in root.iterdir()) == sorted([MANIFEST, "g0001-000001.part"])
    assert resumed.done_keys() == {"a"}  # the failed input is tried again; the orphan's row is scored again
    resumed.commit(rows_of(row("b", 2.0), row("c", 3.0), fmt="jsonl"))
    resumed.merge(out, columns=COLUMNS, position_of={"a": 0, "b": 1, "c": 2})
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == ["a", "b", "c"]
    assert read_csv(errors_path_for(out)) == []  # the latest generation's failures only
    resumed.remove()
    assert not root.exists()


def test_resume_refuses_another_identity(tmp_path):
    out = tmp_path / "preds.csv"
    PartStore.open(out, IDENTITY, columns=COLUMNS).commit(rows_of(row("a", 1.0)))
    with pytest.raises(EdgeregError, match="cannot resume .*model_sha256 'abc' then, 'xyz' now"):
        PartStore.open(out, dict(IDENTITY, model_sha256="xyz"), columns=COLUMNS, resume=True)
    fresh = PartStore.open(out, dict(IDENTITY, model_sha256="xyz"), columns=COLUMNS, overwrite=True)
    assert fresh.done_keys() == set() and fresh.generation == 1


def test_an_existing_output_is_imported_byte_for_byte_and_never_replaced_silently(tmp_path):
    out = tmp_path / "preds.csv"
    with CsvRowWriter(out, COLUMNS) as writer:  # e.g. a local-engine run that stopped
        writer.write(row('odd "name", 2.png', 0.1 + 0.2, ("tta_disagreement", "out_of_range")))
        writer.write(row("z.png", -1.5e-9))
    before = out.read_bytes()
    with pytest.raises(EdgeregError, match="already exists; pass --resume"):
        PartStore.open(out, IDENTITY, columns=COLUMNS)
    with pytest.raises(EdgeregError, match="columns"):
        PartStore.open(out, IDENTITY, columns=("path", "w", "flags"), resume=True)
    store = PartStore.open(out, IDENTITY, columns=COLUMNS, resume=True)
    assert store.done_keys() == {'odd "name", 2.png', "z.png"}
    store.commit(rows_of(row("m.png", 2.0)))
    store.merge(out, columns=COLUMNS, position_of={'odd "name", 2.png': 0, "m.png": 1, "z.png": 2})
    lines = out.read_bytes().splitlines(keepends=True)
    assert b"".join(lines[:2]) + lines[3] == before and lines[2].startswith(b"m.png,2,")


def test_discard_if_new_removes_only_a_state_this_run_made_and_left_empty(tmp_path):
    out = tmp_path / "preds.csv"
    PartStore.open(out, IDENTITY, columns=COLUMNS).discard_if_new()
    assert not state_dir_for(out).exists()
    store = PartStore.open(out, IDENTITY, columns=COLUMNS)
    store.commit(rows_of(row("a", 1.0)))
    resumed = PartStore.open(out, IDENTITY, columns=COLUMNS, resume=True)
    resumed.discard_if_new()
    assert resumed.done_keys() == {"a"} and state_dir_for(out).exists()


def test_a_damaged_manifest_is_reported_with_the_fix(tmp_path):
    out = tmp_path / "preds.csv"
    PartStore.open(out, IDENTITY, columns=COLUMNS).commit(rows_of(row("a", 1.0)))
    (state_dir_for(out) / "g0001-000001.part").unlink()
    with pytest.raises(EdgeregError, match="missing .*--overwrite"):
        PartStore.open(out, IDENTITY, columns=COLUMNS, resume=True)


def test_merge_interleaves_generations_and_survives_a_reordered_listing(tmp_path):
    out = tmp_path / "preds.csv"
    store = PartStore.open(out, IDENTITY, columns=COLUMNS)
    store.commit(rows_of(*(row(k, 1.0) for k in ("a", "c"))))
    store.commit(rows_of(*(row(k, 1.0) for k in ("e", "g"))))
    resumed = PartStore.open(out, IDENTITY, columns=COLUMNS, resume=True)
    resumed.commit(rows_of(*(row(k, 2.0) for k in ("b", "f"))), errors_of(("d", "truncated image")))
    listing = {k: i for i, k in enumerate("abcdefg")}
    assert resumed.merge(out, columns=COLUMNS, position_of=listing) == (6, 1)
    assert [r["path"] for r in read_csv(out)] == list("abcefg")  # generations merged by position
    reordered = {k: i for i, k in enumerate("gfedcba")}  # the list file was reversed between runs
    resumed.merge(out, columns=COLUMNS, position_of=reordered)
    assert [r["path"] for r in read_csv(out)] == list("gfecba")
    gone = {k: i for i, k in enumerate("bcdefg")}  # 'a' is no longer listed: it keeps its place, first
    resumed.merge(out, columns=COLUMNS, position_of=gone)
    assert [r["path"] for r in read_csv(out)] == list("abcefg")


def test_a_jsonl_output_with_unicode_line_separators_in_paths_is_imported_whole(tmp_path):
    """U+2028 and U+0085 stand raw in the JSON lines; only "\\n" ends a row (str.splitlines would split)."""
    out = tmp_path / "preds.jsonl"
    keys = ["a\u2028b.png", "c\u0085d.png", "e\u2029f.png"]
    with open_rows(out, COLUMNS) as writer:
        for i, key in enumerate(keys):
            writer.write(row(key, float(i)))
    before = out.read_bytes()
    store = PartStore.open(out, {**IDENTITY, "format": "jsonl"}, columns=COLUMNS, resume=True)
    assert store.done_keys() == set(keys)
    store.merge(out, columns=COLUMNS, position_of={key: i for i, key in enumerate(keys)})
    assert out.read_bytes() == before


class ShortWrites:
    """A manifest opened for appending whose writes take at most half of what they are given, and
    whose write number ``fail_at`` (if any) fails with ENOSPC: a full disk as the kernel shows it."""

    def __init__(self, handle, fail_at=None):
        self.handle, self.fail_at, self.calls = handle, fail_at, 0

    def write(self, data):
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.handle.write(bytes(data)[:max(1, len(data) // 2)])

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.close()


def short_writes_to_the_manifest(monkeypatch, fail_at=None):
    import builtins

    import edgereg.cluster.parts as parts

    def fake_open(path, mode="r", *args, **kwargs):
        handle = builtins.open(path, mode, *args, **kwargs)
        return ShortWrites(handle, fail_at) if str(path).endswith(MANIFEST) and "a" in mode else handle

    monkeypatch.setattr(parts, "open", fake_open, raising=False)


def test_manifest_lines_are_written_whole_despite_short_writes(tmp_path, monkeypatch):
    out = tmp_path / "preds.csv"
    store = PartStore.open(out, IDENTITY, columns=COLUMNS)
    short_writes_to_the_manifest(monkeypatch)
    store.commit(rows_of(row("a", 1.0)))
    store.commit(rows_of(row("b", 2.0)))
    monkeypatch.undo()
    resumed = PartStore.open(out, IDENTITY, columns=COLUMNS, resume=True)  # not "damaged"
    assert resumed.done_keys() == {"a", "b"}


def test_a_manifest_write_that_fails_half_way_is_cut_back_and_resume_goes_on(tmp_path, monkeypatch):
    from edgereg.errors import WriteFailedError

    out = tmp_path / "preds.csv"
    store = PartStore.open(out, IDENTITY, columns=COLUMNS)
    store.commit(rows_of(row("a", 1.0)))
    manifest = state_dir_for(out) / MANIFEST
    before = manifest.read_bytes()
    short_writes_to_the_manifest(monkeypatch, fail_at=2)  # half a line lands, then the disk is full
    with pytest.raises(WriteFailedError, match=r"no space left on device; free some space, then run again with "
                                                 r"--resume"):
        store.commit(rows_of(row("b", 2.0)))
    assert manifest.read_bytes() == before  # ends with a whole line
    monkeypatch.undo()
    resumed = PartStore.open(out, IDENTITY, columns=COLUMNS, resume=True)
    assert resumed.done_keys() == {"a"}
    resumed.commit(rows_of(row("b", 2.0)))
    assert PartStore.open(out, IDENTITY, columns=COLUMNS, resume=True).done_keys() == {"a", "b"}
    with open(manifest, "ab") as handle:  # half a line from a machine that went down mid-write
        handle.write(b'{"name": "g0003-0000')
    assert PartStore.open(out, IDENTITY, columns=COLUMNS, resume=True).done_keys() == {"a", "b"}
