"""Sources: folders, files and tables read into passages with places and hashes; every bad input one line or a warning."""

from __future__ import annotations

import json
import os

import pytest

from aigc.errors import InputError
from aigc.sources import MAX_WORDS, load_sources, pack, split_markdown, text_hash


def words(n: int, word: str = "word") -> str:
    return " ".join(f"{word}{i}" for i in range(n))


def sentences(n: int, tag: str = "fact") -> str:
    """n sentences of 10 words each."""
    return " ".join(f"The {tag} number {i} is stated here in plain words." for i in range(n))


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF; each page a list of text lines (an empty list: a page without text)."""
    body: dict[int, bytes] = {}
    page_ids = []
    next_id = 4
    for lines in pages:
        pid, cid = next_id, next_id + 1
        next_id += 2
        page_ids.append(pid)
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"] + [f"({line}) Tj T*" for line in lines] + ["ET"]
        stream = "\n".join(ops).encode("latin-1") if lines else b""
        body[pid] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
                     f" /Contents {cid} 0 R >>").encode()
        body[cid] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    body[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    body[2] = f"<< /Type /Pages /Kids [{' '.join(f'{i} 0 R' for i in page_ids)}] /Count {len(pages)} >>".encode()
    body[3] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for i in range(1, next_id):
        offsets[i] = len(out)
        out += f"{i} 0 obj\n".encode() + body[i] + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {next_id}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offsets[i]:010d} 00000 n \n".encode() for i in range(1, next_id))
    out += f"trailer\n<< /Size {next_id} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


# ---------------------------------------------------------------- splitting


def test_markdown_split_on_headings_with_heading_path_and_lines():
    text = ("# Guide\n\nIntro " + words(30) + "\n\n## Setup\n\nSetup " + words(40) + "\n\n### Linux\n\n"
            "Linux " + words(20) + "\n\n## Usage\n\n```\n# not a heading\ncode\n```\n\nUsage " + words(15) + "\n")
    passages = split_markdown(text, document="guide.md", link="guide.md")
    assert [p.heading for p in passages] == ["Guide", "Guide > Setup", "Guide > Setup > Linux", "Guide > Usage"]
    assert passages[0].location == "Guide, line 3"
    assert passages[1].location == "Guide > Setup, line 7"
    assert "# not a heading" in passages[3].text  # a fenced block stays whole, its '#' is no heading
    assert all(p.hash == text_hash(p.text) and p.link == "guide.md" for p in passages)


def test_long_sections_are_packed_into_bounded_passages_without_losing_text():
    paragraphs = [sentences(4, f"p{i}") for i in range(12)]  # 12 paragraphs of 40 words
    paragraphs.append(sentences(50, "long"))  # one paragraph of 500 words
    text = "# Topic\n\n" + "\n\n".join(paragraphs)
    passages = split_markdown(text, document="t.md")
    sizes = [len(p.text.split()) for p in passages]
    assert max(sizes) <= MAX_WORDS and min(sizes[:-1]) >= 100
    assert sum(sizes) == 12 * 40 + 500  # every word kept, none twice
    assert " ".join(p.text for p in passages).split() == text.split()[2:]
    long_para = [p.location for p in passages if "long" in p.text and "p11" not in p.text]
    assert len(long_para) >= 2 and len(set(long_para)) == len(long_para)  # pieces of one paragraph told apart
    assert long_para[0] == "Topic, line 27, part 1" and long_para[1] == "Topic, line 27, part 2"


def test_pack_joins_a_short_remainder_to_the_passage_before():
    out = pack([(words(150), 1, 1), (words(20), 3, 3)])
    assert len(out) == 1 and out[0][1:] == (1, 3)


# ---------------------------------------------------------------- files and folders


def test_folder_of_markdown_text_html_and_pdf(tmp_path):
    src = tmp_path / "notes"
    (src / "sub").mkdir(parents=True)
    (src / "a.md").write_text("# Alpha\n\n## Facts\n\n" + sentences(5, "alpha"), encoding="utf-8")
    (src / "sub" / "b.txt").write_text("Plain title\n\n" + sentences(3, "beta"), encoding="utf-8")
    (src / "c.html").write_text(
        "<html><head><title>Gamma page</title><link rel='canonical' href='https://example.org/gamma'>"
        "<script>var secret = 'script text';</script></head><body><nav>Menu Home About</nav>"
        "<h1>Gamma</h1><h2>Details</h2><p>" + sentences(3, "gamma") + " <b>bold part</b> ends.</p>"
        "<ul><li>First list item with enough words to keep.</li></ul><footer>Copyright notice</footer>"
        "</body></html>", encoding="utf-8")
    (src / "d.pdf").write_bytes(make_pdf([["Delta report page one has a sentence of text here."],
                                          ["Page two says the count was 42 in the year 2021 overall."]]))
    corpus = load_sources([src])
    by_doc = {}
    for p in corpus.passages:
        by_doc.setdefault(os.path.basename(p.document), []).append(p)
    assert set(by_doc) == {"a.md", "b.txt", "c.html", "d.pdf"}
    assert by_doc["a.md"][0].heading == "Alpha > Facts" and by_doc["a.md"][0].title == "Alpha"
    assert by_doc["b.txt"][0].title == "Plain title" and "Plain title" not in by_doc["b.txt"][0].text
    html = by_doc["c.html"]
    assert html[0].heading == "Gamma > Details" and html[0].link == "https://example.org/gamma"
    joined = " ".join(p.text for p in html)
    assert "bold part ends." in joined and "First list item" in joined
    assert "script text" not in joined and "Menu" not in joined and "Copyright" not in joined
    assert [p.location for p in by_doc["d.pdf"]] == ["page 1", "page 2"]
    assert "42" in by_doc["d.pdf"][1].text and by_doc["d.pdf"][1].link == str(src / "d.pdf")
    assert corpus.warnings == []


def test_jsonl_with_url_and_custom_text_field(tmp_path):
    path = tmp_path / "brief.jsonl"
    rows = [{"body": sentences(3, "one"), "url": "https://x.org/1", "title": "First"},
            {"body": sentences(3, "two")}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    corpus = load_sources([path], text_field="body")
    assert [p.location for p in corpus.passages] == ["line 1", "line 2"]
    assert corpus.passages[0].link == "https://x.org/1" and corpus.passages[0].title == "First"
    assert corpus.passages[1].link == str(path)


def test_jsonl_without_the_text_field_names_the_line(tmp_path):
    path = tmp_path / "brief.jsonl"
    path.write_text(json.dumps({"text": sentences(2)}) + "\n\n" + json.dumps({"body": "x", "url": "u"}) + "\n",
                    encoding="utf-8")
    with pytest.raises(InputError, match=r"brief.jsonl line 3: no 'text' field \(its fields: body, url\)"):
        load_sources([path])
    path.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"brief.jsonl line 2: not valid JSON"):
        load_sources([path])


def test_csv_parquet_and_saved_dataset_through_datasets(tmp_path):
    from datasets import Dataset, DatasetDict

    data = {"text": [sentences(3, "csv"), sentences(3, "row")], "link": ["https://a", "https://b"]}
    Dataset.from_dict(data).to_csv(str(tmp_path / "t.csv"), index=False)
    Dataset.from_dict(data).to_parquet(str(tmp_path / "t.parquet"))
    DatasetDict({"train": Dataset.from_dict(data)}).save_to_disk(str(tmp_path / "saved"))
    corpus = load_sources([tmp_path / "t.csv"])
    assert [p.location for p in corpus.passages] == ["row 1", "row 2"] and corpus.passages[1].link == "https://b"
    assert len(load_sources([tmp_path / "t.parquet"]).passages) == 2
    saved = load_sources([tmp_path / "saved"])
    assert [p.document for p in saved.passages] == [f"{tmp_path / 'saved'}[train]"] * 2
    with pytest.raises(InputError, match=r"t.csv: no 'body' column \(columns: text, link\)"):
        load_sources([tmp_path / "t.csv"], text_field="body")


def test_several_sources_at_once_and_duplicates_once(tmp_path):
    (tmp_path / "a.md").write_text(sentences(3, "same"), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": sentences(3, "same")}) + "\n" +
                                      json.dumps({"text": sentences(3, "other")}) + "\n", encoding="utf-8")
    corpus = load_sources([tmp_path / "a.md", tmp_path / "b.jsonl"])
    assert [os.path.basename(p.document) for p in corpus.passages] == ["a.md", "b.jsonl"]
    assert corpus.sources == [str(tmp_path / "a.md"), str(tmp_path / "b.jsonl")]


# ---------------------------------------------------------------- bad input


def test_missing_path_and_empty_folder_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match=r"source .*nowhere: no such file or folder"):
        load_sources([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no source files in this folder"):
        load_sources([tmp_path / "empty"])
    (tmp_path / "x.docx").write_bytes(b"PK")
    with pytest.raises(InputError, match=r"unsupported file type '.docx'"):
        load_sources([tmp_path / "x.docx"])


def test_binary_non_utf8_unsupported_and_textless_pdf_are_skipped_with_warnings(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.md").write_text(sentences(3), encoding="utf-8")
    (src / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    (src / "latin.txt").write_bytes("Caf\xe9 cr\xe8me".encode("latin-1"))
    (src / "image.png").write_bytes(b"\x89PNG")
    (src / "scan.pdf").write_bytes(make_pdf([[]]))
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    corpus = load_sources([src])
    assert [os.path.basename(p.document) for p in corpus.passages] == ["good.md"]
    text = "\n".join(corpus.warnings)
    assert "bin.txt: skipped, a binary file" in text
    assert "latin.txt: skipped, not UTF-8 (byte 3)" in text
    assert "1 files of unsupported types skipped" in text and "image.png" in text
    assert "scan.pdf: skipped, a PDF without a text layer" in text
    assert "broken.pdf: skipped, pypdf could not read it" in text


def test_a_very_large_file_is_capped_with_a_warning(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text(sentences(200, "big"), encoding="utf-8")  # about 11 KB
    corpus = load_sources([path], max_bytes=2000)
    assert "big.txt: only the first" in corpus.warnings[0]
    assert sum(len(p.text) for p in corpus.passages) <= 2000
    (tmp_path / "big.pdf").write_bytes(make_pdf([["x"]] * 40))
    with pytest.raises(InputError, match="no text found"):
        load_sources([tmp_path / "big.pdf"], max_bytes=1000)


def test_links_out_of_the_folder_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("SECRET " + sentences(3), encoding="utf-8")
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "inner" / "ok.md").write_text(sentences(3, "ok"), encoding="utf-8")
    os.symlink(outside / "secret.md", src / "leak.md")
    os.symlink(outside, src / "leakdir")
    os.symlink(src / "inner" / "ok.md", src / "alias.md")  # a link inside the folder is read
    corpus = load_sources([src])
    assert not any("SECRET" in p.text for p in corpus.passages)
    assert [os.path.basename(p.document) for p in corpus.passages] == ["alias.md"]  # ok.md: same text, kept once
    assert sum("a link leading out of" in w for w in corpus.warnings) == 2


def test_a_change_after_reading_is_noticed(tmp_path):
    path = tmp_path / "a.md"
    path.write_text(sentences(3), encoding="utf-8")
    corpus = load_sources([tmp_path])
    assert corpus.changed_files() == []
    path.write_text(sentences(4), encoding="utf-8")
    (tmp_path / "new.md").write_text(sentences(2), encoding="utf-8")
    assert str(path) in corpus.changed_files() and str(tmp_path) in corpus.changed_files()
