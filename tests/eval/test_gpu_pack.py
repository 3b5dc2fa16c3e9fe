"""The GPU run's packing: the GGUF cut into parts travels in separate runs and is joined
back byte for byte (sha256 checked); a missing or damaged part stops with a clear line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from eval.gpu import pack as gp


def _meta(src: Path, parts: list[dict]) -> dict:
    return {
        "gguf": {
            "name": src.name,
            "bytes": src.stat().st_size,
            "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
            "parts": parts,
        }
    }


def _model(tmp_path: Path, size: int = 3 * 1024 * 1024 + 7) -> Path:
    src = tmp_path / "model" / "tiny.Q4_1.gguf"
    src.parent.mkdir()
    src.write_bytes(os.urandom(size))  # odd size: the last part is shorter
    return src


def test_split_stage_join_round_trip(tmp_path: Path) -> None:
    src = _model(tmp_path)
    pack = tmp_path / "pack"
    parts = gp.split_file(src, pack)
    assert [p["file"] for p in parts] == ["part1/tiny.Q4_1.gguf.1", "part2/tiny.Q4_1.gguf.2"]
    assert sum(p["bytes"] for p in parts) == src.stat().st_size
    meta = _meta(src, parts)
    (pack / "data").mkdir()
    (pack / "data" / "meta.json").write_text(json.dumps(meta))
    stage = tmp_path / "stage"
    # Run 1 stages part 1 outside the repo; run 2 carries part 2 only.
    assert gp.main(["stage", "--pack", str(pack), "--part", "1", "--dest", str(stage)]) == 0
    shutil.rmtree(pack / "part1")
    joined = gp.join_parts(pack, meta, stage)
    assert joined.read_bytes() == src.read_bytes()
    # A second run reuses the joined file (checked, not rebuilt).
    mtime = joined.stat().st_mtime_ns
    assert gp.join_parts(pack, meta, stage).stat().st_mtime_ns == mtime


def test_missing_or_damaged_part_stops_with_one_line(tmp_path: Path) -> None:
    src = _model(tmp_path, 100_000)
    pack = tmp_path / "pack"
    meta = _meta(src, gp.split_file(src, pack))
    p2 = pack / "part2" / "tiny.Q4_1.gguf.2"
    data = bytearray(p2.read_bytes())
    data[10] ^= 0xFF
    p2.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="does not match its sha256"):
        gp.join_parts(pack, meta, tmp_path / "stage")
    p2.unlink()
    with pytest.raises(SystemExit, match="missing GGUF part part2"):
        gp.join_parts(pack, meta, tmp_path / "stage")
    assert not (tmp_path / "stage" / src.name).exists()  # nothing half-joined left as the model


def test_stage_without_the_carried_part_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="carry eval/gpu/.pack/part1"):
        gp.main(["stage", "--pack", str(tmp_path), "--part", "1", "--dest", str(tmp_path / "s")])


def test_rank_and_all_user_metrics() -> None:
    lr = pytest.importorskip("eval.gpu.lorarun")
    s = np.array([-1.0, -0.5, -0.5, -3.0])
    assert lr.rank_of(s, 1) == 1  # a tie keeps the served order
    assert lr.rank_of(s, 2) == 2
    assert lr.rank_of(s, 0) == 3
    m = lr.metrics([1.0, 3.0], n_users=4)  # two users missed by the shortlist count 0
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(4)) / 4)
    assert m["recall@10"] == 0.5
