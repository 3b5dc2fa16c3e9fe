"""service/files.py: a prepared folder is swapped in whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.files import folder_built_aside


def test_a_built_folder_replaces_the_old_one_by_one_rename(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with folder_built_aside(folder) as work:
        assert work.parent == tmp_path and work.is_dir() and not any(work.iterdir())
        (work / "new.txt").write_text("new")
        assert (folder / "old.txt").exists()  # readers still see the old folder meanwhile
    assert [p.name for p in folder.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no work folder left behind


def test_a_failed_build_leaves_the_old_folder_and_no_work_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="conversion failed"), folder_built_aside(folder) as work:
        (work / "half.txt").write_text("half")
        raise RuntimeError("conversion failed")
    assert [p.name for p in folder.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_stale_work_folder_of_this_process_is_cleared_first(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    with folder_built_aside(folder) as work:
        (work / "a.txt").write_text("a")
        stale = work
    stale.mkdir()
    (stale / "leftover.txt").write_text("x")  # a crash between build and clean-up
    with folder_built_aside(folder) as work:
        assert work == stale and not any(work.iterdir())
    assert not any(folder.iterdir()) and not stale.exists()
