"""Tests of article evaluation: exact metric values on hand-made texts, the judge with a fake backend, perplexity, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import ClassVar, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from click.testing import CliRunner

from aigc import evaluate as ev
from aigc import judge as jd
from aigc.backends.base import Backend, Completion, GenerationRequest


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AIGC_OUTPUTS_DIR", str(tmp_path / "outputs"))
    for var in ("AIGC_BACKEND", "AIGC_MODEL", "AIGC_TEMPLATES_DIR"):
        monkeypatch.delenv(var, raising=False)


def body(n: int, word: str = "word") -> str:
    """``n`` distinct words (so no repetition metric is touched by accident)."""
    return " ".join(f"{word}{i}" for i in range(n)) + "."


# -- length -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested, produced, expected",
    [(100, 100, 100.0), (100, 200, 200 / 3), (100, 50, 50.0), (100, 400, 0.0), (100, 700, 0.0),
     (100, 25, 0.0), (100, 0, 0.0), (300, 400, 100 * (1 - (4 / 3 - 1) / 3)), (300, 200, 75.0)],
)
def test_length_score_is_longwriters_s_l(requested, produced, expected):
    assert ev.length_score(requested, produced) == pytest.approx(expected)


def test_length_score_needs_a_positive_request():
    with pytest.raises(ValueError):
        ev.length_score(0, 10)


# -- parsing and coverage ---------------------------------------------------------------------------

REPORT = f"""# Heat in cities

*Report · 2026-11-28*

## Contents

1. [Alpha](#1-alpha)
2. [Beta](#2-beta)

## 1. Alpha

{body(25, "a")}

```
## not a heading
```

## 2. **Beta**

{body(20, "b")}

## Gamma section

Too short here.

---

*Written with aigc (model). Machine-generated text: check facts before publishing.*
"""


def test_parse_article_skips_contents_code_and_footer():
    art = ev.parse_article(REPORT)
    assert art.title == "Heat in cities"
    assert [s.title for s in art.sections] == ["1. Alpha", "2. **Beta**", "Gamma section"]
    assert "## not a heading" in art.sections[0].body
    assert "Written with aigc" not in art.sections[-1].body
    assert [s.words for s in art.sections] == [25 + 3, 20, 3]  # the fenced line has 3 words
    assert art.body_words == 51


def test_coverage_reports_missing_and_empty_sections():
    cov = ev.outline_coverage(ev.parse_article(REPORT), ["Alpha", "beta", "Gamma section", "Delta"], min_words=20)
    assert cov["coverage"] == 0.5
    assert (cov["covered"], cov["expected"]) == (2, 4)
    assert cov["missing"] == ["Delta"]
    assert cov["empty"] == ["Gamma section"]
    # a stricter minimum makes Beta (20 words) empty too
    assert ev.outline_coverage(ev.parse_article(REPORT), ["Alpha", "Beta"], min_words=21)["empty"] == ["Beta"]


def test_coverage_without_outline_uses_the_headings():
    cov = ev.outline_coverage(ev.parse_article(REPORT))
    assert cov["basis"] == "headings"
    assert cov["coverage"] == pytest.approx(2 / 3)
    assert cov["empty"] == ["Gamma section"]


# -- repetition -------------------------------------------------------------------------------------


def test_distinct_n_exact_values():
    assert ev.distinct_n(["a b a b a"], 1) == pytest.approx(2 / 5)
    assert ev.distinct_n(["a b a b a"], 2) == pytest.approx(2 / 4)
    assert ev.distinct_n(["The cat sat on the mat."], 1) == pytest.approx(5 / 6)  # case folded
    assert ev.distinct_n(["The cat sat on the mat."], 2) == 1.0
    assert ev.distinct_n(["a b", "a b"], 2) == 0.5  # pooled over sections
    assert ev.distinct_n(["a", "b"], 2) is None  # n-grams never span two sections


def test_repeated_4grams_within_and_across_sections():
    sections = ["A b, c d. a B c D", "a b c d e", "w x y z"]
    # 5 + 2 + 1 = 8 occurrences; "a b c d" twice in section 1 (within: 2), and it is also in
    # section 2, so its 2 + 1 occurrences count across (3).
    rep = ev.repeated_ngrams(sections, 4)
    assert rep["ngrams"] == 8
    assert rep["within"] == pytest.approx(2 / 8)
    assert rep["across"] == pytest.approx(3 / 8)
    assert ev.repeated_ngrams(["one two three four five"], 4) == {"within": 0.0, "across": 0.0, "ngrams": 2}
    assert ev.repeated_ngrams(["too short"], 4)["within"] is None


def test_evaluate_article_reads_the_record_and_is_json_able():
    record = {"title": "Heat", "requested": {"words": 102, "sections": 3},
              "outline": {"titles": ["Alpha", "Beta", "Delta"]}}
    result = ev.evaluate_article(REPORT, record)
    assert result["requested_words"] == 102 and result["words"] == 51
    assert result["length_score"] == pytest.approx(50.0)
    assert result["coverage"] == pytest.approx(2 / 3) and result["sections_missing"] == ["Delta"]
    assert result["distinct_1"] == 1.0 and result["repeated_4gram_within"] == 0.0
    assert "perplexity" not in result and "judge_score" not in result
    json.dumps(result)
    # arguments win over the record; no requested words -> no length score
    assert ev.evaluate_article(REPORT, record, requested_words=51)["length_score"] == 100.0
    assert ev.evaluate_article(REPORT)["length_score"] is None


def test_evaluation_without_quality_imports_no_model_library():
    # the quality metrics need sentence embeddings (torch); length, coverage and repetition do not
    code = (
        "import sys; from aigc.evaluate import evaluate_article; "
        f"r = evaluate_article({REPORT!r}, requested_words=40, quality=False); "
        "assert r['coverage'] is not None; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_summarize_and_table():
    results = [{"name": "one", "words": 100, "length_score": 50.0, "coverage": 1.0, "perplexity": None},
               {"name": "two|x", "words": 300, "length_score": None, "coverage": 0.5, "perplexity": 10.0}]
    summary = ev.summarize(results)
    assert summary == {"articles": 2, "words": 200.0, "length_score": 50.0, "coverage": 0.75, "perplexity": 10.0}
    lines = ev.format_table(results).splitlines()
    assert lines[0].startswith("| article | words |") and "perplexity" in lines[0] and "judge" not in lines[0]
    assert lines[2].startswith("| one | 100 |") and "| – |" in lines[2]
    assert lines[3].startswith("| two\\|x | 300 |") and "| 50% |" in lines[3]
    assert lines[-1].startswith("| mean of 2 | 200 |") and "| 75% |" in lines[-1]


# -- judge ------------------------------------------------------------------------------------------


class CannedJudge(Backend):
    """A backend that returns canned replies in turn and records what it was asked."""

    name: ClassVar[str] = "canned"

    def __init__(self, replies: Sequence[str], prefill: bool = False):
        self.replies, self.history = list(replies), []
        self.supports_prefill = prefill

    @property
    def model_id(self) -> str:
        return "canned-judge"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        self.history.extend(requests)
        return [Completion(text=self.replies.pop(0)) for _ in requests]


@pytest.mark.parametrize(
    "reply, ratings, reasons",
    [
        ('```json\n{"coherence": {"score": 4, "reason": "clear"}, "meaningfulness": 3, "truthfulness": "5/5",'
         ' "reasons": {"meaningfulness": "some filler"}}\n```', (4, 3, 5), ("clear", "some filler", "")),
        ("Coherence: 4/5 - because it flows.\n**Meaningfulness:** 2 – mostly filler\ntruthfulness = 3",
         (4, 2, 3), ("it flows.", "mostly filler", "")),
        ("Coherence (1-5): 5\nMeaningfulness score: 1 out of 5. Empty.\n- **Truthfulness**: **3** - unsure",
         (5, 1, 3), ("", "Empty.", "unsure")),
        ("Coherence: 4 - the truth is 2 things.\n1. Meaningfulness - 3: filler\n* Truthfulness: 3.5",
         (4, 3, 3.5), ("the truth is 2 things.", "filler", "")),  # a rating opening a line wins
        ("I rate coherence 4 out of 5, meaningfulness is 2 and truthfulness gets 1.", (4, 2, 1), ("", "", "")),
    ],
)
def test_parse_judgement_well_formed(reply, ratings, reasons):
    verdict = jd.parse_judgement(reply)
    assert tuple(verdict["ratings"].values()) == ratings
    assert tuple(verdict["reasons"].values()) == reasons
    assert verdict["flags"] == []
    assert verdict["mean"] == pytest.approx(sum(ratings) / 3)
    assert verdict["score"] == pytest.approx((sum(ratings) / 3 - 1) * 25)


def test_parse_judgement_malformed_and_out_of_range():
    verdict = jd.parse_judgement("Coherence: 7 - great\nMeaningfulness: 8/10\nI cannot judge truthfulness.")
    assert verdict["ratings"] == {"coherence": None, "meaningfulness": None, "truthfulness": None}
    assert verdict["flags"] == ["coherence: rating 7 is outside 1-5", "meaningfulness: rated on a scale of 10, not 5",
                                "truthfulness: missing"]
    assert verdict["mean"] is None and verdict["score"] is None
    partial = jd.parse_judgement('{"coherence": 5, "meaningfulness": 0, "truthfulness": true} Meaningfulness: 1')
    assert partial["ratings"] == {"coherence": 5, "meaningfulness": 1, "truthfulness": None}
    assert partial["flags"] == ["truthfulness: not a number"]
    assert partial["mean"] == 3 and partial["score"] == 50
    assert jd.parse_judgement("{not json")["flags"][0] == "coherence: missing"


def test_judge_renders_the_template_and_continues_the_prefill():
    backend = CannedJudge([" 4 - on topic\nMeaningfulness: 4 - fine\nTruthfulness: 1 - invented quotes"], prefill=True)
    result = ev.evaluate_article(REPORT, requested_words=51, judge_backend=backend)
    assert (result["judge_coherence"], result["judge_meaningfulness"], result["judge_truthfulness"]) == (4, 4, 1)
    assert result["judge_mean"] == 3 and result["judge_score"] == 50
    assert result["judge"]["reasons"]["coherence"] == "on topic" and result["judge"]["model"] == "canned-judge"
    (request,) = backend.history
    assert request.temperature == 0.0
    roles = [m.role for m in request.messages]
    assert roles == ["system", "user", "assistant"] and request.messages[-1].content == "Coherence:"
    user = request.messages[1].content
    assert "# Heat in cities" in user and "## 2. **Beta**" in user and "b19." in user
    assert "Written with aigc" not in user and "Contents" not in user
    json.dumps(result)


def test_judge_without_prefill_support_and_truncation():
    backend = CannedJudge(['{"coherence": 2, "meaningfulness": 2, "truthfulness": 2}'] * 2)
    arts = [ev.parse_article(REPORT), ev.parse_article("# T\n\n## S\n\nshort text")]
    verdicts = jd.judge(arts, backend, max_words=5)
    assert [v["score"] for v in verdicts] == [25, 25]
    assert len(backend.history) == 2 and all(r.messages[-1].role == "user" for r in backend.history)
    assert "its first 5 words" in backend.history[0].messages[-1].content
    assert "a24." not in backend.history[0].messages[-1].content
    assert "its first" not in backend.history[1].messages[-1].content


# -- perplexity -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A 2-layer GPT-2 (128-token context) with the embedded tokenizer minus its chat template."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from aigc.backends.local.embedded import ensure_converted

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(ensure_converted())
    tokenizer.chat_template = None
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        initializer_range=0.2)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _direct(folder, text: str, window: int = 10_000, stride: int = 10_000) -> float:
    """Reference perplexity computed with plain torch: each token scored once, in its window."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    total, count, scored = 0.0, 0, 1  # tokens [0, scored) are done; token 0 is never predicted
    with torch.no_grad():
        for begin in range(0, len(ids), stride):
            piece = ids[begin : begin + window]
            logp = torch.log_softmax(model(piece[None]).logits[0], -1)
            for j in range(max(1, scored - begin), len(piece)):
                total -= float(logp[j - 1, piece[j]])
                count += 1
            scored = begin + len(piece)
            if scored >= len(ids):
                break
    return math.exp(total / count)


def test_perplexity_is_exp_mean_nll(tiny_gpt2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "Cities are warmer than the countryside around them, mostly because of asphalt."
    (ppl,) = ev.perplexity([text], str(tiny_gpt2))
    tok, model = AutoTokenizer.from_pretrained(tiny_gpt2), AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = math.exp(float(model(ids, labels=ids).loss))
    assert ppl == pytest.approx(expected, rel=1e-4)


def test_perplexity_batches_and_slides(tiny_gpt2):
    from aigc.evaluate import load_lm

    lm, tokenizer, model_id = load_lm(str(tiny_gpt2))
    assert model_id == str(tiny_gpt2.resolve())
    long = " ".join(f"Sentence {i} says heat builds up over roads." for i in range(20))  # > 128 tokens
    assert 200 < len(tokenizer(long)["input_ids"]) < 256
    texts = ["Short text here.", long, "x", "", "A medium length text about parks, trees and shade in summer."]
    one = ev.perplexity(texts, lm=lm, tokenizer=tokenizer, batch_size=1)
    many = ev.perplexity(texts, lm=lm, tokenizer=tokenizer, batch_size=4)
    assert one[2] is None and one[3] is None  # fewer than 2 tokens
    for a, b in zip(one, many):
        assert a == b or a == pytest.approx(b, rel=1e-4)
    assert one[0] == pytest.approx(_direct(tiny_gpt2, texts[0]), rel=1e-4)
    assert one[1] == pytest.approx(_direct(tiny_gpt2, long, window=128, stride=64), rel=1e-4)
    slid = ev.perplexity([long], lm=lm, tokenizer=tokenizer, window=100, stride=30)[0]
    assert slid == pytest.approx(_direct(tiny_gpt2, long, window=100, stride=30), rel=1e-4)


# -- the CLI ----------------------------------------------------------------------------------------


def write_article(folder, title: str, sections: dict[str, str], requested: int) -> None:
    folder.mkdir(parents=True)
    parts = [f"# {title}", "", "*Article · 2026-11-28*", "", "## Contents", ""]
    parts += [f"{i}. [{t}](#x)" for i, t in enumerate(sections, 1)] + [""]
    for t, text in sections.items():
        parts += [f"## {t}", "", text, ""]
    parts += ["---", "", "*Written with aigc (m).*"]
    (folder / "article.md").write_text("\n".join(parts) + "\n", "utf-8")
    record = {"title": title, "requested": {"words": requested, "sections": len(sections)},
              "outline": {"titles": list(sections)}}
    (folder / "article.json").write_text(json.dumps(record), "utf-8")


@pytest.fixture
def outputs(tmp_path):
    root = tmp_path / "batch"
    write_article(root / "alpha", "Alpha", {"One": body(30, "a"), "Two": body(30, "b")}, 60)
    write_article(root / "beta", "Beta", {"One": body(39, "c"), "Two": "Tiny."}, 20)
    write_article(root / ".partial" / "x", "Hidden", {"One": "x"}, 10)
    return root


def _cli(*args: str):
    from aigc.cli import main

    return CliRunner().invoke(main, ["eval", *args])


def test_cli_table_over_an_outputs_folder(outputs, tmp_path):
    out = tmp_path / "scores.json"
    result = _cli(str(outputs), "--json", str(out))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("|")]
    assert len(lines) == 5  # header, rule, two articles, means
    assert lines[2].startswith("| alpha | 60 | 60 | 100.0 | 100% |")
    assert lines[3].startswith("| beta | 40 | 20 | 66.7 | 50% |")  # twice the words asked; "Two" is empty
    assert lines[4].startswith("| mean of 2 | 50 | 40 | 83.3 | 75% |")
    data = json.loads(out.read_text())
    assert [a["name"] for a in data["articles"]] == ["alpha", "beta"]
    assert data["articles"][1]["sections_empty"] == ["Two"]
    assert data["means"]["length_score"] == pytest.approx(250 / 3) and data["means"]["articles"] == 2


def test_cli_single_file_and_words_option(outputs, tmp_path):
    md = tmp_path / "draft.md"
    md.write_text((outputs / "alpha" / "article.md").read_text())
    plain = _cli(str(md))
    assert plain.exit_code == 0 and "| draft | 60 | – | – | 100% |" in plain.output
    given = _cli(str(md), "--words", "30")
    assert "| draft | 60 | 30 | 66.7 |" in given.output
    folder = _cli(str(outputs / "beta"))
    assert folder.exit_code == 0 and "| beta | 40 | 20 |" in folder.output


def test_cli_perplexity_and_judge(outputs, tiny_gpt2, monkeypatch):
    from aigc import backends

    judge = CannedJudge(["Coherence: 5\nMeaningfulness: 3\nTruthfulness: 4", "Coherence: 2\nMeaningfulness: 9"])
    monkeypatch.setitem(backends._REGISTRY, "canned", lambda **options: judge)
    result = _cli(str(outputs), "--perplexity", "--perplexity-model", str(tiny_gpt2), "--judge", "-b", "canned")
    assert result.exit_code == 0, result.output
    header, _, alpha, beta, means = [line for line in result.output.splitlines() if line.startswith("|")]
    assert header.endswith("| perplexity | judge 1-5 | judge 0-100 |")
    assert alpha.endswith("| 4.00 | 75.0 |") and beta.endswith("| 2.00 | 25.0 |")
    assert means.endswith("| 3.00 | 50.0 |")
    ppl = [float(row.split("|")[-4]) for row in (alpha, beta)]
    assert all(p > 1 for p in ppl)
    assert len(judge.history) == 2


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "bad-json", "bad-backend"])
def test_cli_bad_input_is_one_line(case, tmp_path, outputs):
    args = {"missing": [str(tmp_path / "nope")], "empty": [str(tmp_path)], "binary": [str(tmp_path / "bin.md")],
            "bad-json": [str(outputs / "alpha")], "bad-backend": [str(outputs), "--judge", "-b", "nosuch"]}[case]
    (tmp_path / "bin.md").write_bytes(b"\xff\xfe\x00bad")
    if case == "empty":
        args = [str(tmp_path / "empty")]
        (tmp_path / "empty").mkdir()
    if case == "bad-json":
        (outputs / "alpha" / "article.json").write_text("{broken")
    result = _cli(*args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    expected = {"missing": "no such file or folder", "empty": "no articles found", "binary": "cannot read it as UTF-8",
                "bad-json": "not valid JSON", "bad-backend": "unknown backend 'nosuch'"}[case]
    assert expected in lines[0]


def test_block_perplexity_is_the_models_own_mean_loss(tiny_gpt2):
    """Fine-tuning's validation perplexity: exp of transformers' own loss over packed blocks, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from aigc.perplexity import block_perplexity

    lm = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    torch.manual_seed(1)
    blocks = torch.randint(0, lm.config.vocab_size, (5, 32))
    with torch.no_grad():
        want = math.exp(lm(input_ids=blocks, labels=blocks).loss.item())
    lm.train()
    assert block_perplexity(lm, blocks, batch_size=2) == pytest.approx(want, rel=1e-5)
    assert lm.training  # the mode it was in
