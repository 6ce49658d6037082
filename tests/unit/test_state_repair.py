"""The repair rule for a stack's DIY backend blobs (stacks/state_repair.py):
every torn shape a cut-off write can leave, and what must stay untouched."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from stacks.state_repair import (
    FileBlobs,
    LazyBlobs,
    StackKeys,
    StateLost,
    checkpoint_readable,
    forget_stack,
    plan_repairs,
    repair_stack_state,
)

KEYS = StackKeys("stackspace", "ws-alice-demo-1a2b3c4d")
CKPT = f"{KEYS.checkpoint_base}.json"
BAK = CKPT + ".bak"
ATTRS = b'{"user.cache_control":"","user.content_type":"application/json"}'


def checkpoint(n: int) -> bytes:
    return json.dumps({"version": 3, "checkpoint": {
        "stack": "organization/stackspace/ws-alice-demo-1a2b3c4d",
        "latest": {"resources": [{"urn": f"urn:{i}"} for i in range(n)]}}}).encode()


def backup(stamp: int, n: int) -> tuple[str, bytes]:
    return f"{KEYS.backups_dir}{KEYS.stack}.{stamp}.json", checkpoint(n)


def actions(steps) -> list[tuple[str, str]]:
    return [(s.action, s.key) for s in steps]


def test_a_whole_stack_needs_nothing():
    blobs = {CKPT: checkpoint(3), CKPT + ".attrs": ATTRS, BAK: checkpoint(2),
             BAK + ".attrs": ATTRS, backup(5, 3)[0]: checkpoint(3)}
    assert plan_repairs(blobs, KEYS) == []


def test_no_stack_at_all_stays_missing():
    assert plan_repairs({}, KEYS, reset_if_lost=True) == []


@pytest.mark.parametrize("sidecar", [b"", b'{"user.content_type": "appl', b"null", b"[]"])
@pytest.mark.parametrize("of", [CKPT, BAK, f"{KEYS.backups_dir}x.1.json",
                                ".pulumi/locks/organization/stackspace/ws-alice-demo-1a2b3c4d/"
                                "u.json"])
def test_an_empty_or_torn_sidecar_is_removed_and_nothing_else(sidecar, of):
    blobs = {CKPT: checkpoint(3), BAK: checkpoint(2), of: checkpoint(1), of + ".attrs": sidecar}
    steps = plan_repairs(blobs, KEYS)
    assert actions(steps) == [("delete", of + ".attrs")]
    assert not steps[0].rewinds_state  # the data itself was whole


def test_leftover_temp_files_are_removed():
    tmp = f"{CKPT}.18a2b3c4d5e6f7.tmp"
    steps = plan_repairs({CKPT: checkpoint(3), tmp: b'{"version": 3, "chec'}, KEYS)
    assert actions(steps) == [("delete", tmp)]


@pytest.mark.parametrize("torn", [b"", checkpoint(3)[:40], b"\x00" * 64, b"[]",
                                  b'{"version": 3}'])
def test_a_torn_checkpoint_comes_back_from_its_bak(torn):
    steps = plan_repairs({CKPT: torn, CKPT + ".attrs": ATTRS, BAK: checkpoint(2)}, KEYS)
    assert actions(steps) == [("write", CKPT), ("delete", CKPT + ".attrs")]
    assert steps[0].data == checkpoint(2) and steps[0].rewinds_state
    assert "torn" in steps[0].reason and BAK in steps[0].reason


def test_a_missing_checkpoint_comes_back_from_its_bak():
    steps = plan_repairs({BAK: checkpoint(2), BAK + ".attrs": ATTRS}, KEYS)
    assert actions(steps) == [("write", CKPT)]
    assert steps[0].data == checkpoint(2) and "missing" in steps[0].reason


def test_without_a_good_bak_the_newest_readable_backup_is_used():
    old, new, newest_torn = backup(100, 1), backup(300, 3), backup(400, 4)
    blobs = {CKPT: b"{", BAK: b"", old[0]: old[1], new[0]: new[1],
             newest_torn[0]: newest_torn[1][:10]}
    steps = plan_repairs(blobs, KEYS)
    assert steps[0].action == "write" and steps[0].data == new[1]
    assert new[0] in steps[0].reason


def test_a_gzip_checkpoint_is_checked_and_restored_in_its_own_form():
    key = f"{KEYS.checkpoint_base}.json.gz"
    good = gzip.compress(checkpoint(2))
    assert plan_repairs({key: gzip.compress(checkpoint(3))}, KEYS) == []
    steps = plan_repairs({key: gzip.compress(checkpoint(3))[:20], key + ".bak": good}, KEYS)
    assert actions(steps) == [("write", key)] and steps[0].data == good


def test_no_readable_copy_is_an_error_unless_a_reset_is_allowed():
    blobs = {CKPT: checkpoint(3)[:30], BAK: b"", CKPT + ".attrs": b""}
    with pytest.raises(StateLost, match="torn and no readable copy"):
        plan_repairs(blobs, KEYS)
    steps = plan_repairs(blobs, KEYS, reset_if_lost=True)
    assert actions(steps) == [("delete", CKPT + ".attrs"), ("write", CKPT)]
    written = json.loads(steps[1].data)
    assert written["checkpoint"] == {"stack": "organization/stackspace/ws-alice-demo-1a2b3c4d",
                                     "latest": None}
    assert steps[1].rewinds_state and checkpoint_readable(CKPT, steps[1].data)


def test_backups_are_read_only_when_the_checkpoint_needs_one(tmp_path: Path):
    reads: list[str] = []

    class Counting(FileBlobs):
        def read(self, key: str) -> bytes:
            reads.append(key)
            return super().read(key)

    store = Counting(tmp_path)
    store.write(CKPT, checkpoint(3))
    store.write(backup(1, 1)[0], checkpoint(1))
    assert plan_repairs(LazyBlobs(store, store.keys(KEYS.prefixes)), KEYS) == []
    assert reads == [CKPT]


def test_file_backend_repair_end_to_end_on_disk(tmp_path: Path):
    """The three shapes of issue 21 on real files: each leaves the CLI's
    checkpoint loadable, and another stack beside it is never touched."""
    other = f"{KEYS.checkpoint_base}x.json"  # ws-...dx: a stack whose name extends ours
    files = FileBlobs(tmp_path)
    for key, data in ((CKPT, checkpoint(3)), (BAK, checkpoint(2)), (other, b"{"),
                      (CKPT + ".attrs", b""), (f"{CKPT}.1f.tmp", b"x")):
        files.write(key, data)
    steps = repair_stack_state(f"file://{tmp_path}", KEYS)
    assert sorted(actions(steps)) == [("delete", f"{CKPT}.1f.tmp"), ("delete", CKPT + ".attrs")]
    assert (tmp_path / CKPT).read_bytes() == checkpoint(3)
    assert (tmp_path / other).read_bytes() == b"{"  # not ours
    (tmp_path / CKPT).write_bytes(checkpoint(3)[:50])
    repair_stack_state(f"file://{tmp_path}", KEYS)
    assert (tmp_path / CKPT).read_bytes() == checkpoint(2)
    (tmp_path / CKPT).unlink()
    repair_stack_state(f"file://{tmp_path}", KEYS)
    assert (tmp_path / CKPT).read_bytes() == checkpoint(2)
    assert not list(tmp_path.rglob("*.tmp"))  # the repair's own write is atomic too


def test_other_backends_are_left_alone():
    assert repair_stack_state("s3://bucket/state", KEYS, reset_if_lost=True) == []


def test_a_removed_stack_leaves_no_copy_to_be_restored_from(tmp_path: Path):
    """What `stack rm` leaves (.bak, backups, history) goes with the stack: a
    workspace made again under the same name starts from nothing."""
    files = FileBlobs(tmp_path)
    for key in (BAK, BAK + ".attrs", backup(7, 2)[0], f"{KEYS.history_dir}h.history.json",
                f"{KEYS.checkpoint_base}x.json"):
        files.write(key, checkpoint(1))
    assert forget_stack(f"file://{tmp_path}", KEYS) == 4
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{KEYS.stack}x.json"]
    # Nor its folders (one per deleted workspace would pile up).
    assert not [p for p in tmp_path.rglob(KEYS.stack) if p.is_dir()]
    assert plan_repairs(LazyBlobs(files, files.keys(KEYS.prefixes)), KEYS) == []
