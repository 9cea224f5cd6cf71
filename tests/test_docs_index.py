"""The docs index: the stores' blob contract, incremental indexing shared through the store,
hybrid retrieval on the sample handbook, and ``penny index``."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from numpy.typing import NDArray

from bot.cli import main
from bot.docs.index import EMBED_BATCH, DocsIndex, DocsIndexer, IndexConflict, IndexSnapshot, NoDocsFound
from bot.docs.parse import MAX_FILE_BYTES
from bot.docs.retrieve import NO_MATCH_THRESHOLD, Retriever, search, tokenize
from proxy_core.clock import ManualClock
from proxy_core.semantic.embedders import WordLlamaEmbedder, embedder_from_spec
from proxy_core.stores.base import Store
from proxy_core.stores.sqlite import SCHEMA_VERSION, SqliteStore
from tests.pdf_builder import make_pdf
from tests.redis_targets import EVERY_BACKEND

ROOT = Path(__file__).resolve().parent.parent
HANDBOOK = ROOT / "examples" / "docs"
QUESTIONS = ROOT / "examples" / "questions.jsonl"


@pytest.fixture(scope="module")
def embedder() -> WordLlamaEmbedder:
    model = embedder_from_spec("local:wordllama")
    assert isinstance(model, WordLlamaEmbedder)
    return model


class CountingEmbed:
    """The real embedder, recording every batch it was asked for."""

    def __init__(self, embedder: WordLlamaEmbedder) -> None:
        self.embedder = embedder
        self.batches: list[list[str]] = []

    def __call__(self, texts: list[str]) -> NDArray[np.float32]:
        self.batches.append(list(texts))
        return self.embedder.embed(texts)

    @property
    def texts(self) -> list[str]:
        return [text for batch in self.batches for text in batch]

    def reset(self) -> None:
        self.batches.clear()


# -- the blob contract, on every store ----------------------------------------------------------


@pytest.mark.parametrize("store", EVERY_BACKEND, indirect=True)  # the docs index on a cluster too
def test_blob_get_put_delete(store: Store) -> None:
    assert store.blob_get("docs:missing") is None
    store.blob_put_many({"docs:a": b"\x00\x01binary\xff", "docs:b": b"", "other:c": "ü".encode()})
    assert store.blob_get("docs:a") == b"\x00\x01binary\xff"
    assert store.blob_get("docs:b") == b""
    store.blob_put_many({"docs:a": b"new", "docs:d": b"d"}, delete=["docs:b", "docs:a", "docs:never"])
    assert store.blob_get("docs:a") == b"new"  # deleted and put: the put wins
    assert store.blob_get("docs:b") is None
    assert dict(store.blob_scan("docs:")) == {"docs:a": b"new", "docs:d": b"d"}
    store.blob_put_many({})  # nothing to do is fine


@pytest.mark.parametrize("store", EVERY_BACKEND, indirect=True)  # the docs index on a cluster too
def test_blob_scan_by_prefix_pages_through_everything(store: Store) -> None:
    many = {f"ix:vec:{i:04d}": i.to_bytes(4, "little") for i in range(700)}
    store.blob_put_many({**many, "ix:manifest": b"m", "ix;after": b"x", "iw:before": b"y", "ix*[?]:odd": b"z"})
    assert dict(store.blob_scan("ix:vec:")) == many
    assert dict(store.blob_scan("ix*[?]:")) == {"ix*[?]:odd": b"z"}  # glob characters are literal
    assert {key for key, _ in store.blob_scan("ix")} == {*many, "ix:manifest", "ix;after", "ix*[?]:odd"}
    assert len(dict(store.blob_scan(""))) == len(many) + 4
    assert list(store.blob_scan("nothing:")) == []


@pytest.mark.parametrize("store", EVERY_BACKEND, indirect=True)  # the docs index on a cluster too
def test_blob_writes_are_seen_by_another_instance(store: Store, open_twin: Callable[[], Store]) -> None:
    twin = open_twin()
    store.blob_put_many({"k:1": b"one", "k:2": b"two"})
    assert dict(twin.blob_scan("k:")) == {"k:1": b"one", "k:2": b"two"}
    twin.blob_put_many({}, delete=["k:1"])
    assert store.blob_get("k:1") is None


@pytest.mark.parametrize("store", EVERY_BACKEND, indirect=True)  # the docs index on a cluster too
def test_a_conditional_blob_write_happens_only_from_the_expected_state(store: Store) -> None:
    assert store.blob_put_many({"ix:version": b"1", "ix:a": b"a"}, expect=("ix:version", None))
    # Someone else got there first: nothing of this write lands.
    assert not store.blob_put_many({"ix:version": b"2", "ix:b": b"b"}, delete=["ix:a"], expect=("ix:version", None))
    assert dict(store.blob_scan("ix:")) == {"ix:version": b"1", "ix:a": b"a"}
    assert not store.blob_put_many({"ix:version": b"2"}, expect=("ix:version", b"0"))
    assert store.blob_put_many({"ix:version": b"2", "ix:b": b"b"}, delete=["ix:a"], expect=("ix:version", b"1"))
    assert dict(store.blob_scan("ix:")) == {"ix:version": b"2", "ix:b": b"b"}
    assert store.blob_put_many({}, expect=("ix:version", b"2"))  # a pure check that holds


def test_sqlite_a_version_2_file_gains_the_blobs_table(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "penny.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE cache (scope TEXT, key TEXT, value TEXT, expires_at REAL, PRIMARY KEY (scope, key))")
    raw.execute("PRAGMA user_version = 2")
    raw.commit()
    raw.close()
    store = SqliteStore(path, clock=clock)
    store.blob_put_many({"a": b"1"})
    assert store.blob_get("a") == b"1"
    store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    raw.close()


# -- incremental indexing -----------------------------------------------------------------------


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A copy of a few handbook pages, free to edit."""
    root = tmp_path / "docs"
    for page in ("company-overview.md", "policies/expenses.md", "policies/travel.rst", "people/offices.html"):
        (root / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(HANDBOOK / page, root / page)
    return root


def passages_of(index: DocsIndex, doc_path: str) -> list[str]:
    return [p.text for p in index.snapshot.passages if p.doc_path == doc_path]


def test_indexing_embeds_only_what_changed(store: Store, docs: Path, embedder: WordLlamaEmbedder) -> None:
    embed = CountingEmbed(embedder)
    indexer = DocsIndexer(store, embed, embedder_name=embedder.name)
    seen: list[tuple[int, int]] = []

    first = indexer.index(docs, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert first.files == 4 and first.version == 1 and first.removed == 0
    assert first.embedded == first.passages == len(embed.texts) > 4
    assert all(len(batch) <= EMBED_BATCH for batch in embed.batches)
    loaded = DocsIndex.load(store)
    assert loaded.version == 1 and len(loaded) == first.passages and loaded.embedder == embedder.name
    assert loaded.snapshot.matrix.shape == (first.passages, embedder.dims)
    assert np.allclose(np.linalg.norm(loaded.snapshot.matrix, axis=1), 1.0, atol=1e-5)

    embed.reset()
    again = indexer.index(docs)
    assert (again.embedded, again.removed, again.version, again.passages) == (0, 0, 1, first.passages)
    assert embed.batches == []

    # Edit one section of one page: only that passage is embedded again.
    expenses = docs / "policies" / "expenses.md"
    before = passages_of(loaded, "policies/expenses.md")
    target = next(text for text in before if "gym" in text.lower())
    edited = target.replace("gym", "climbing gym", 1)
    expenses.write_text(expenses.read_text("utf-8").replace(target, edited), "utf-8")
    embed.reset()
    changed = indexer.index(docs)
    assert changed.version == 2
    assert changed.embedded == 1 and changed.removed == 1 and changed.passages == first.passages
    assert "climbing gym" in embed.texts[0]
    assert loaded.refresh_if_changed() is True
    assert loaded.version == 2
    assert edited in passages_of(loaded, "policies/expenses.md")
    assert target not in passages_of(loaded, "policies/expenses.md")
    assert loaded.refresh_if_changed() is False

    # Delete a page: its passages go, nothing is embedded.
    gone = len(passages_of(loaded, "people/offices.html"))
    (docs / "people" / "offices.html").unlink()
    embed.reset()
    deleted = indexer.index(docs)
    assert (deleted.files, deleted.embedded, deleted.removed, deleted.version) == (3, 0, gone, 3)
    assert loaded.refresh_if_changed() is True
    assert passages_of(loaded, "people/offices.html") == []
    assert len(loaded) == first.passages - gone
    assert not list(store.blob_scan("docs:doc:people/"))


def test_a_folder_with_nothing_to_index_changes_nothing(
    store: Store, docs: Path, tmp_path: Path, embedder: WordLlamaEmbedder
) -> None:
    indexer = DocsIndexer(store, embedder.embed, embedder_name=embedder.name)
    first = indexer.index(docs)
    empty = tmp_path / "empty"
    (empty / ".git").mkdir(parents=True)  # hidden entries are skipped: nothing here to index
    (empty / "notes.docx").write_bytes(b"PK")
    with pytest.raises(NoDocsFound, match="Nothing was changed; the index keeps its 4 documents") as refused:
        indexer.index(empty)
    assert str(empty) in str(refused.value)
    assert DocsIndex.load(store).version == first.version and len(DocsIndex.load(store)) == first.passages
    emptied = indexer.index(empty, allow_empty=True)
    assert (emptied.files, emptied.passages, emptied.removed) == (0, 0, first.passages)
    assert len(DocsIndex.load(store)) == 0


def test_a_new_embedder_re_embeds_everything(store: Store, docs: Path, embedder: WordLlamaEmbedder) -> None:
    DocsIndexer(store, embedder.embed, embedder_name=embedder.name).index(docs)
    small = embedder_from_spec("local:wordllama?dims=64")
    report = DocsIndexer(store, small.embed, embedder_name=small.name).index(docs)
    assert report.embedded == report.passages and report.version == 2 and report.removed == 0
    index = DocsIndex.load(store)
    assert index.embedder == small.name and index.snapshot.matrix.shape == (report.passages, 64)


def test_of_two_runs_at_once_the_one_that_finishes_second_writes_nothing(
    store: Store, open_twin: Callable[[], Store], docs: Path, embedder: WordLlamaEmbedder
) -> None:
    other = DocsIndexer(open_twin(), embedder.embed, embedder_name=embedder.name)
    finished: list[int] = []

    def embed_while_the_other_run_finishes(texts: list[str]) -> NDArray[np.float32]:
        if not finished:  # the other run starts and ends while this one is embedding
            (docs / "company-overview.md").unlink()
            finished.append(other.index(docs).version)
        return embedder.embed(texts)

    slow = DocsIndexer(store, embed_while_the_other_run_finishes, embedder_name=embedder.name)
    with pytest.raises(IndexConflict, match="run it again"):
        slow.index(docs)
    assert finished == [1]
    index = DocsIndex.load(store)
    assert index.version == 1 and passages_of(index, "company-overview.md") == []  # the other run's index
    assert slow.index(docs).version == 1  # run again: nothing left to change


def test_pdfs_are_indexed_by_page_and_a_damaged_one_is_skipped(
    store: Store, docs: Path, embedder: WordLlamaEmbedder
) -> None:
    (docs / "security.pdf").write_bytes(make_pdf(
        [["Badges and visitors", "Wear your office badge where it can be seen, and sign every visitor in at",
          "the front desk; visitors wear a paper badge and are walked to the exit when they leave."],
         ["Laptop security", "Encrypt every laptop disk with FileVault or BitLocker before first use, keep",
          "the operating system updated within a week of each release, and lock the screen when you step away."]],
        title="Security handbook"))
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really")
    with structlog.testing.capture_logs() as logs:
        report = DocsIndexer(store, embedder.embed, embedder_name=embedder.name).index(docs)
    assert report.files == 5  # the four pages of the fixture and the readable PDF
    assert any(log.get("path") == "broken.pdf" and log.get("reason") == "not_indexable" for log in logs)
    [hit, *_] = Retriever(DocsIndex.load(store), embedder.embed).search("how do I encrypt my laptop disk")
    assert (hit.passage.doc_path, hit.passage.anchor, hit.passage.title) == ("security.pdf", "page=2",
                                                                            "Security handbook")


def test_every_replica_serves_the_same_index(
    store: Store, open_twin: Callable[[], Store], docs: Path, embedder: WordLlamaEmbedder
) -> None:
    empty = DocsIndex.load(open_twin())
    assert empty.version == 0 and len(empty) == 0
    assert search(empty.snapshot, "anything", np.zeros(embedder.dims, dtype=np.float32)) == []

    DocsIndexer(store, embedder.embed, embedder_name=embedder.name).index(docs)
    assert empty.refresh_if_changed() is True
    assert empty.version == 1 and len(empty) == len(DocsIndex.load(store))
    retriever = Retriever(empty, embedder.embed)
    assert retriever.search("can I expense my gym membership")[0].passage.doc_path == "policies/expenses.md"


# -- retrieval on the handbook ------------------------------------------------------------------


@pytest.fixture(scope="module")
def handbook(tmp_path_factory: pytest.TempPathFactory, embedder: WordLlamaEmbedder) -> Iterator[IndexSnapshot]:
    store = SqliteStore(tmp_path_factory.mktemp("handbook") / "penny.db")
    DocsIndexer(store, embedder.embed, embedder_name=embedder.name).index(HANDBOOK)
    yield DocsIndex.load(store).snapshot
    store.close()


def test_tokenizer_lowercases_stems_and_drops_stop_words() -> None:
    assert tokenize("What are the Refunds policies for deployed services?") == ["refund", "policy", "deploy", "service"]


@pytest.mark.parametrize(
    ("question", "page"),
    [
        ("who owns the dispatch engine?", "company-overview.md"),
        ("can I expense my gym membership", "policies/expenses.md"),
        ("how long are production logs kept?", "engineering/logs-and-observability.md"),
        ("does starter include route optimization", "pricing/plans.md"),
        ("can i transfer from the berlin office to toronto", "people/offices.html"),
    ],
)
def test_the_right_page_ranks_first(
    handbook: IndexSnapshot, embedder: WordLlamaEmbedder, question: str, page: str
) -> None:
    hits = search(handbook, question, embedder.embed([question])[0], k=5)
    assert hits[0].passage.doc_path == page
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert hits[0].score >= NO_MATCH_THRESHOLD
    assert [h.bm25 for h in hits] and all(-1.0 <= h.cosine <= 1.0 for h in hits)


@pytest.mark.parametrize("question", ["What's the capital of Peru?", "Write me a poem about cats"])
def test_off_topic_questions_fall_under_the_threshold(
    handbook: IndexSnapshot, embedder: WordLlamaEmbedder, question: str
) -> None:
    hits = search(handbook, question, embedder.embed([question])[0], k=10)
    assert max(h.score for h in hits) < NO_MATCH_THRESHOLD


def test_hybrid_hit_at_3_on_the_handbook(handbook: IndexSnapshot, embedder: WordLlamaEmbedder) -> None:
    questions: list[dict[str, Any]] = [json.loads(line) for line in QUESTIONS.read_text("utf-8").splitlines()]
    vectors = embedder.embed([q["question"] for q in questions])
    hits = 0
    for question, vector in zip(questions, vectors, strict=True):
        found = search(handbook, question["question"], vector, k=20)
        pages = list(dict.fromkeys(h.passage.doc_path for h in found))
        hits += question["page"] in pages[:3]
    assert hits / len(questions) >= 0.9


def test_bm25_mode_needs_no_vector(handbook: IndexSnapshot) -> None:
    hits = search(handbook, "who owns the dispatch engine?", None, k=3, mode="bm25")
    assert hits[0].passage.doc_path == "company-overview.md"
    assert all(h.cosine == 0.0 and h.bm25 > 0 for h in hits)
    with pytest.raises(ValueError, match="embedding"):
        search(handbook, "gdpr", None, mode="hybrid")


# -- penny index ----------------------------------------------------------------------------------


@pytest.fixture
def store_file(cli_env: str) -> Path:
    """The SQLite file of ``cli_env``'s store, which ``penny index`` writes."""
    return Path(cli_env.removeprefix("sqlite:///"))


def test_penny_index(store_file: Path, docs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", str(docs)]) == 0
    captured = capsys.readouterr()
    assert "indexed 4 files" in captured.out and "version 1" in captured.out
    assert captured.err == "4/4 files\n"  # not a terminal: the last line of the progress bar only
    assert main(["index", str(docs)]) == 0
    assert "0 embedded" in capsys.readouterr().out
    store = SqliteStore(store_file)
    try:
        assert DocsIndex.load(store).version == 1
    finally:
        store.close()


def test_penny_index_refuses_an_empty_or_missing_folder_and_changes_nothing(
    store_file: Path, docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["index", str(docs)]) == 0
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "huge.md").write_bytes(b"# Huge\n\n" + b"word " * (MAX_FILE_BYTES // 5 + 1))
    for folder, reason in (("empty", "no Markdown, reStructuredText, HTML, text or PDF files"),
                           ("huge", "its 1 supported file(s) are over the size limit (2 MB; a PDF 32 MB)"),
                           ("dcos", "is not a directory: it does not exist")):
        assert main(["index", folder]) == 2
        captured = capsys.readouterr()
        assert "\npenny index: " in "\n" + captured.err and f"{folder} ({tmp_path / folder})" in captured.err
        assert reason in captured.err and "Nothing was changed" in captured.err
        assert captured.out == "" and "removed" not in captured.err and "Traceback" not in captured.err
    assert "--allow-empty" in main_err(["index", "empty"], capsys)
    store = SqliteStore(store_file)
    try:
        assert DocsIndex.load(store).version == 1 and len(DocsIndex.load(store)) > 0
        assert main(["index", "dcos", "--allow-empty"]) == 2  # a folder that is not there is never "empty"
        assert main(["index", "empty", "--allow-empty"]) == 0
        assert "0 files" in capsys.readouterr().out
        assert DocsIndex.load(store).version == 2 and len(DocsIndex.load(store)) == 0
    finally:
        store.close()


def test_penny_index_refuses_the_whole_filesystem_or_a_home_folder(
    store_file: Path, docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``penny index /`` (or ``~``, a slip for ``~/docs``) walked everything under it and would have
    answered Slack questions from every text file it found there."""
    assert main(["index", str(docs)]) == 0
    capsys.readouterr()
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.md").write_text("# My notes\n\nThe staging password is in the vault.\n")
    monkeypatch.setenv("HOME", str(home))
    for folder, what in (("/", "the whole filesystem"), (str(home), "your home folder")):
        assert main(["index", folder]) == 2
        err = capsys.readouterr().err
        assert f"{folder} is {what}" in err and "Nothing was changed" in err and "Traceback" not in err
    store = SqliteStore(store_file)
    try:
        assert DocsIndex.load(store).version == 1
    finally:
        store.close()


def main_err(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    main(argv)
    return capsys.readouterr().err


def test_penny_index_refuses_what_it_cannot_do(
    store_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["index", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err
    monkeypatch.setenv("PENNY_EMBEDDER", "openai:text-embedding-3-small")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["index", str(tmp_path)]) == 2  # it embeds through the OpenAI API: it needs the key
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and "Traceback" not in err


def test_a_file_that_is_not_text_is_skipped_and_one_in_windows_1252_is_read(
    store: Store, tmp_path: Path, embedder: WordLlamaEmbedder
) -> None:
    """Random bytes named ``.md`` were indexed as a thousand passages of garbage, and quoted."""
    docs = tmp_path / "odd"
    docs.mkdir()
    (docs / "binary.md").write_bytes(bytes(range(256)) * 400)
    (docs / "menu.md").write_bytes("# Café menu\n\nThe café serves crème brûlée on Fridays.\n".encode("cp1252"))
    with structlog.testing.capture_logs() as logs:
        report = DocsIndexer(store, embedder.embed, embedder_name=embedder.name).index(docs)
    assert report.files == 1
    assert [(log["path"], log["reason"]) for log in logs if log["event"] == "docs_file_skipped"] == [
        ("binary.md", "not_indexable")]
    [hit, *_] = Retriever(DocsIndex.load(store), embedder.embed).search("what dessert does the cafe serve")
    assert "crème brûlée" in hit.passage.text and hit.passage.title == "Café menu"


def test_a_hostile_folder_leaks_nothing_from_outside_and_one_bad_file_stops_nothing(
    store: Store, docs: Path, tmp_path: Path, embedder: WordLlamaEmbedder
) -> None:
    """A docs repo's contributor adds links to Penny's own .env and to /etc, and a reST page whose
    nesting overflows the parser's recursion: the rest is indexed, none of that is."""
    (tmp_path / ".env").write_text("SLACK_BOT_TOKEN=xoxb-not-for-the-docs\n")
    (docs / "settings.md").symlink_to(tmp_path / ".env")
    (docs / "etc").symlink_to("/etc", target_is_directory=True)
    nested = "".join(" " * i + ".. note::\n\n" for i in range(600))
    (docs / "deep.rst").write_text("Deep\n====\n\n" + nested + " " * 600 + "deep text\n")
    with structlog.testing.capture_logs() as logs:
        report = DocsIndexer(store, embedder.embed, embedder_name=embedder.name).index(docs)
    assert report.files == 4  # the four handbook pages
    index = DocsIndex.load(store)
    assert not any("xoxb" in p.text for p in index.snapshot.passages)
    assert {p.doc_path for p in index.snapshot.passages} == {
        "company-overview.md", "policies/expenses.md", "policies/travel.rst", "people/offices.html"}
    skipped = {(log["path"], log["reason"]) for log in logs if log["event"] == "docs_file_skipped"}
    assert {("settings.md", "link_outside_docs_folder"), ("etc", "link_outside_docs_folder"),
            ("deep.rst", "parse_failed")} <= skipped


def test_a_page_that_became_binary_leaves_the_index_but_an_unreadable_folder_keeps_its_pages(
    store: Store, docs: Path, embedder: WordLlamaEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    indexer = DocsIndexer(store, embedder.embed, embedder_name=embedder.name)
    indexer.index(docs)
    (docs / "company-overview.md").write_bytes(bytes(range(256)) * 40)  # replaced by an image, say
    # The folder's permissions are wrong for a moment (the OS refuses the listing; chmod 000 does
    # not stop root, which the tests may run as).
    listing = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path) == docs / "policies":
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = indexer.index(docs)
    monkeypatch.undo()
    paths = {p.doc_path for p in DocsIndex.load(store).snapshot.passages}
    assert "company-overview.md" not in paths  # not text any more: its old text is not quoted on
    assert {"policies/expenses.md", "policies/travel.rst"} <= paths  # a permission that may pass: kept
    assert report.files == 3


def test_a_file_with_no_text_is_skipped_not_indexed_as_a_document(
    store: Store, docs: Path, tmp_path: Path, embedder: WordLlamaEmbedder
) -> None:
    """A blank file was counted as an indexed document with no passages: a folder of empty files
    (a checkout gone wrong) "indexed 2 files" and emptied the index instead of being refused."""
    indexer = DocsIndexer(store, embedder.embed, embedder_name=embedder.name)
    first = indexer.index(docs)
    (docs / "blank.md").write_text("  \n\n\t\n")
    (docs / "markup.html").write_text("<html><body><div></div></body></html>")
    again = indexer.index(docs)
    assert (again.files, again.passages, again.version) == (first.files, first.passages, first.version)
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.md").write_text("")
    (blank / "b.txt").write_text("\n\n")
    with pytest.raises(NoDocsFound, match=re.escape("its 2 supported file(s) have no text. Nothing was changed")):
        indexer.index(blank)
    assert len(DocsIndex.load(store)) == first.passages


def test_penny_index_follows_links_into_the_folders_penny_docs_link_roots_names(
    store_file: Path, docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api = tmp_path / "src" / "api" / "docs"
    api.mkdir(parents=True)
    (api / "reference.md").write_text("# API reference\n\nEvery endpoint takes a bearer token.\n")
    (docs / "api").symlink_to(api, target_is_directory=True)
    assert main(["index", str(docs)]) == 0
    assert "indexed 4 files" in capsys.readouterr().out  # not followed unless allowed
    monkeypatch.setenv("PENNY_DOCS_LINK_ROOTS", str(tmp_path / "src"))
    assert main(["index", str(docs)]) == 0
    assert "indexed 5 files" in capsys.readouterr().out
    store = SqliteStore(store_file)
    try:
        assert "api/reference.md" in {p.doc_path for p in DocsIndex.load(store).snapshot.passages}
    finally:
        store.close()
    monkeypatch.setenv("PENNY_DOCS_LINK_ROOTS", str(tmp_path / "nowhere"))
    assert main(["index", str(docs)]) == 2
    assert f"PENNY_DOCS_LINK_ROOTS: {tmp_path / 'nowhere'} is not a directory" in capsys.readouterr().err


def test_a_broken_link_in_the_docs_folder_is_named_in_a_warning(
    store: Store, docs: Path, embedder: WordLlamaEmbedder
) -> None:
    """A page linked into the folder whose target moved (``latest.md -> v2/guide.md``) left the
    index without a word: a dangling link was neither a file nor a folder, so nothing was said."""
    (docs / "v2").mkdir()
    (docs / "v2" / "guide.md").write_text("# Guide\n\nThe guide explains how refunds are approved.\n")
    (docs / "latest.md").symlink_to(Path("v2") / "guide.md")
    (docs / "api").symlink_to(Path("src") / "api", target_is_directory=True)  # src/ not checked out
    indexer = DocsIndexer(store, embedder.embed, embedder_name=embedder.name)
    indexer.index(docs)
    assert "latest.md" in {p.doc_path for p in DocsIndex.load(store).snapshot.passages}
    (docs / "v2").rename(docs / "v3")
    with structlog.testing.capture_logs() as logs:
        indexer.index(docs)
    assert {p.doc_path for p in DocsIndex.load(store).snapshot.passages} >= {"v3/guide.md"}
    broken = [(log["path"], log["target"], log["log_level"]) for log in logs
              if log["event"] == "docs_file_skipped" and log["reason"] == "broken_link"]
    assert sorted(broken) == [("api", "src/api", "warning"), ("latest.md", "v2/guide.md", "warning")]


def test_penny_index_on_a_folder_it_cannot_read_says_so_and_does_not_offer_to_empty_the_index(
    store_file: Path, docs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A docs folder without read permission was reported as holding "no Markdown, reStructuredText,
    HTML, text or PDF files", with the advice to empty the index with --allow-empty."""
    (docs / "team" / "private").mkdir(parents=True)
    (docs / "team" / "private" / "salaries.md").write_text("# Salaries\n\nBands are reviewed every April.\n")
    listing = os.scandir

    def scandir(path: Any) -> Any:  # chmod 000 does not stop root, which the tests may run as
        if Path(path) in (docs, docs / "team" / "private"):
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    for folder, unread in ((docs, "it could not be read"), (docs / "team", "private could not be read")):
        assert main(["index", str(folder)]) == 2
        err = capsys.readouterr().err
        assert f"no docs to index in {folder}: {unread} (the warning above says why)" in err, err
        assert "Nothing was changed" in err and "Permission denied" in err  # in the warning, naming the folder
        assert "no Markdown" not in err and "--allow-empty" not in err and "Traceback" not in err
