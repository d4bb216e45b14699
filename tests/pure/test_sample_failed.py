"""Issue 16: a PURE generation that yields no image is a failure, not the bicubic input with exit 0.

Nothing is written for it (the bicubic LQ would be scored as a restoration), it is named and counted
among the skipped (exit 3; every image failed: exit 2), and the next run redoes exactly those,
including outputs an older version wrote as bicubic with ``"ok": false``. The restorer is the real
one; a wrapper marks chosen images' results as failed (as an untrained model's would be).
"""

import json

import pytest

from common.paths import EXIT_SKIPPED, exit_code
from tests.folder_cases import make_folder, user_error
from tests.pure.test_sample_folder import _args, ckpts, sample  # noqa: F401 (fixtures)

GOOD = {"p0": (12, 16), "p1": (10, 10)}


@pytest.fixture
def failing(monkeypatch):
    """Results of images whose LQ height is in ``heights`` come back with ok=False."""
    import pure.restore

    heights, seen = set(), []
    real = pure.restore.Restorer.restore

    def restore(self, lqs, generator=None):
        out = real(self, lqs, generator)
        for lq, res in zip(lqs, out, strict=True):
            seen.append(lq.shape[0])
            if lq.shape[0] in heights:
                res.ok = False
        return out

    monkeypatch.setattr(pure.restore.Restorer, "restore", restore)
    return heights, seen


def _images(out):
    """The per-image outputs (the run's own summary.json / run_settings.json set aside)."""
    return sorted(p.name for p in out.iterdir() if p.name not in ("summary.json", "run_settings.json"))


def _clean(lr):
    for p in lr.iterdir():
        if p.stem not in GOOD:
            p.unlink()
    return lr


@pytest.mark.slow  # three tiny-model folder runs (~25 s idle)
def test_failed_generations_are_counted_never_written_and_redone(tmp_path, capsys, sample, ckpts, failing):  # noqa: F811
    heights, seen = failing
    lr = _clean(make_folder(tmp_path / "LR", GOOD))
    out = tmp_path / "run" / "sr"
    heights.add(12)  # p0 fails
    result = sample(_args(ckpts, lr, out))
    assert exit_code(result) == EXIT_SKIPPED and result["summary"]["failed"] == 1
    assert [p.split("/")[-1] for p in result["summary"]["skipped_files"]] == ["p0.png"]
    assert _images(out) == ["p1.json", "p1.png"]  # no bicubic stand-in for p0
    assert "skipped " + str(lr / "p0.png") + ": no valid image generated" in capsys.readouterr().out

    # the next run (skip_existing, the default) redoes p0, and p1 once it looks like an old stand-in
    record = json.loads((out / "p1.json").read_text())
    (out / "p1.json").write_text(json.dumps(dict(record, ok=False)))  # what the old code left for a failure
    heights.clear()
    seen.clear()
    result = sample(_args(ckpts, lr, out))
    assert sorted(seen) == [10, 12] and exit_code(result) == 0 and result["summary"]["failed"] == 0
    assert _images(out) == ["p0.json", "p0.png", "p1.json", "p1.png"]
    assert json.loads((out / "p1.json").read_text())["ok"] is True

    # nothing generated at all: exit 2, naming the file and why
    (lr / "p0.png").unlink()
    heights.add(10)
    line = user_error(capsys, sample, _args(ckpts, lr, tmp_path / "sr2"))
    assert f"none of the 1 input file(s) could be processed (first: {lr / 'p1.png'}: no valid image" in line
    assert not _images(tmp_path / "sr2"), sorted(p.name for p in (tmp_path / "sr2").iterdir())
