"""Outline quality against human outlines: STORM's heading soft recall and the FreshWiki outline loader."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from aigc.errors import InputError

Embed = Callable[[Sequence[str]], np.ndarray]

#: A heading line containing one of these (lower-cased) ends the human outline, as in STORM's evaluation.
STOP_HEADINGS = ("references", "external links", "see also", "notes")


def default_embed(texts: Sequence[str]) -> np.ndarray:
    """aigc's sentence embeddings (all-MiniLM-L6-v2), imported on first use."""
    from aigc.embeddings import embed

    return embed(list(texts))


def outline_headings(text: str) -> list[str]:
    """The headings of an article or outline, read exactly as STORM's ``eval_outline_quality.get_sections``.

    Every "N. " becomes "#"; lines starting with "#" are kept (all levels, "#" stripped); reading stops
    at a line containing "# References" or a heading containing references, external links, see also
    or notes.
    """
    text = re.sub(r"\d+\. ", "#", text)
    headings = []
    for line in text.split("\n"):
        line = line.strip()
        if "# References" in line:
            break
        if line.startswith("#"):
            if any(k in line.lower() for k in STOP_HEADINGS):
                break
            headings.append(line.strip("#").strip())
    return headings


def topic_file(topic: str) -> str:
    """The file name FreshWiki gives a topic's article: spaces and slashes become underscores."""
    return topic.replace(" ", "_").replace("/", "_") + ".txt"


def load_topics(data_dir: str | Path) -> list[dict]:
    """The topics of a FreshWiki folder (``topics.jsonl``: topic, url, file)."""
    path = Path(data_dir) / "topics.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: not found; pass the folder that holds topics.jsonl and txt/ (e.g. ../shared/data/freshwiki-dev)")
    topics = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{i}: not JSON ({err.msg})") from None
            if not isinstance(row, dict) or not row.get("topic"):
                raise InputError(f"{path}:{i}: needs a \"topic\" field")
            topics.append(row)
    return topics


def human_outline(topic: str, data_dir: str | Path, *, file: str | None = None) -> list[str]:
    """The human outline of ``topic``: the headings of ``txt/<Topic>.txt`` (see :func:`outline_headings`)."""
    path = Path(data_dir) / (file or Path("txt") / topic_file(topic))
    if not path.is_file():
        raise InputError(f"{path}: no human article for topic {topic!r}; check the topic's spelling or the data folder")
    return outline_headings(path.read_text(encoding="utf-8"))


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def soft_cardinality(vectors: np.ndarray) -> float:
    """card(S) = sum over s of 1 / sum over s' of cos(s, s') (rows are the embeddings of S's distinct items)."""
    unit = _unit_rows(vectors)
    return float((1.0 / (unit @ unit.T).sum(axis=1)).sum())


def heading_soft_recall(golden: Iterable[str], predicted: Iterable[str], *, embed: Embed | None = None) -> float:
    """STORM's heading soft recall: (card(G) + card(P) - card(G u P)) / card(G) over distinct headings.

    0 when nothing was predicted. STORM embedded with paraphrase-MiniLM-L6-v2; aigc uses all-MiniLM-L6-v2,
    so figures are close to, not identical with, the published ones.
    """
    g, p = list(dict.fromkeys(golden)), list(dict.fromkeys(predicted))
    if not p:
        return 0.0
    if not g:
        raise ValueError("no golden headings: soft recall is undefined")
    union = list(dict.fromkeys(g + p))
    vectors = (embed or default_embed)(union)
    index = {text: i for i, text in enumerate(union)}
    rows = lambda items: vectors[[index[t] for t in items]]  # noqa: E731
    card_g, card_p = soft_cardinality(rows(g)), soft_cardinality(rows(p))
    return (card_g + card_p - soft_cardinality(vectors)) / card_g


_WORD = re.compile(r"[A-Za-z0-9][\w'’-]*")
_FUNCTION_WORDS = frozenset("a an the of in on at to for and or by with from as is are".split())


def heading_entity_recall_lite(golden: Iterable[str], predicted: Iterable[str]) -> float:
    """A cheap stand-in for STORM's heading entity recall (which tags entities with flair NER).

    "Entities" here are the capitalised words and numbers of the headings that are not their first word
    (a heading's first word is capitalised anyway), lower-cased; recall = shared / golden (1.0 when the
    golden headings have none, as in STORM). Not comparable with published entity-recall figures.
    """
    def entities(headings: Iterable[str]) -> set[str]:
        found = set()
        for h in headings:
            for i, w in enumerate(_WORD.findall(h)):
                if w.lower() in _FUNCTION_WORDS:
                    continue
                if w[0].isdigit() or (i > 0 and w[0].isupper()):
                    found.add(w.lower())
        return found

    g, p = entities(golden), entities(predicted)
    return 1.0 if not g else len(g & p) / len(g)
