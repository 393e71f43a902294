"""Languages: CJK counted in characters, 。！？ sentences, clean-up that keeps Chinese, readable folder names and
anchors, Chinese templates, the HTML lang, and Chinese through the fake backend and a real HTTP server on loopback."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aigc.backends.base import Completion
from aigc.cleanup import clean_section, fit_length, split_sentences, words
from aigc.evaluate import length_score
from aigc.languages import detect_lang, normalize_lang
from aigc.outputs import ascii_slug, slugify
from aigc.pipeline import write_article
from aigc.spec import ArticleSpec
from aigc.templates import anchor

#: 55 Chinese characters of prose and 3 punctuation marks: the paragraph clean_section used to drop.
PARA = "城市热岛效应是指城市中心的气温明显高于周边郊区的现象。它的成因包括建筑密集、绿地减少和人为热排放等。"
HAN = len(re.findall(r"[\u4e00-\u9fff]", PARA))


def test_chinese_counts_characters_and_english_words():
    assert HAN > 40 and words(PARA) == HAN  # as LongBench-Write: each Han character, no punctuation
    assert words("Heat rises. 热岛 2026 well-known") == 2 + 2 + 1 + 1
    assert words("東京タワーは高い") == 8 and words("서울의 여름") == 5


def test_sentences_end_at_chinese_marks_and_clean_up_keeps_them():
    assert split_sentences("第一句。第二句！第三句？没有结尾") == ["第一句。", "第二句！", "第三句？", "没有结尾"]
    assert clean_section(PARA, title="成因") == PARA
    text = f"好的，以下是这一节：\n\n## 成因\n\n{PARA}\n\n{PARA}\n\n希望这对你有帮助！"
    assert clean_section(text, title="成因") == PARA  # filler, heading, repeat and outro gone; the text kept
    assert clean_section(PARA + "它还会", title="x", truncated=True) == PARA  # cut at 。
    assert fit_length(PARA * 1, 20) == PARA.split("。")[0] + "。"  # the sentence end nearest 20 characters


def test_language_is_detected_from_the_script_and_unknown_codes_are_one_line():
    assert detect_lang("城市热岛效应") == "zh" and detect_lang("東京の夏") == "ja" and detect_lang("서울") == "ko"
    assert detect_lang("Urban heat islands") == "en" and detect_lang("", "Москва летом") == "ru"
    assert detect_lang("Write about 城市热岛效应 in Chinese") == "en"  # mostly Latin letters
    assert normalize_lang("ZH-cn") == "zh-CN"
    with pytest.raises(ValueError, match="unknown language 'xx'; give a code such as en or zh"):
        normalize_lang("xx")
    spec = ArticleSpec.build(topic="Tides", brief="请用中文写一篇关于潮汐的短文，介绍月球引力的作用。")
    assert spec.lang == "zh" and spec.counts_characters  # the brief decides over a short Latin topic


@pytest.mark.parametrize("text,slug", [("城市热岛效应", "城市热岛效应"), ("東京の夏 2026", "東京の夏-2026"),
                                       ("Москва летом", "москва-летом"), ("Café naïve", "cafe-naive")])
def test_folder_names_stay_readable(text, slug):
    assert slugify(text) == slug
    assert re.fullmatch(r"[a-z0-9-]+", ascii_slug(text))  # Prefect artifact keys


@pytest.mark.parametrize("reply", [
    "1、城市热岛的成因\n2、对健康的影响\n3、缓解措施",
    "一、城市热岛的成因\n二、对健康的影响\n三、缓解措施",
    "第一部分：城市热岛的成因\n第二部分：对健康的影响\n第三部分：缓解措施",
    "（一）城市热岛的成因\n（二）对健康的影响\n（三）缓解措施。",
])
def test_chinese_numbered_outlines_are_read(reply):
    from aigc.outline_parse import parse_outline

    assert parse_outline(reply) == ["城市热岛的成因", "对健康的影响", "缓解措施"]


def test_topics_without_letters_get_a_hash_not_a_shared_name():
    assert slugify("🎉🎉") != slugify("🎈") and slugify("🎉🎉").startswith("article-")


def test_anchors_of_chinese_headings_link_to_their_ids():
    from aigc.assemble import markdown_to_html

    assert anchor("热岛的成因") == "热岛的成因" and anchor("Café culture") == "cafe-culture"
    html = markdown_to_html(f"[成因](#{anchor('热岛的成因')})\n\n## 热岛的成因\n\n正文。")
    assert 'href="#热岛的成因"' in html and 'id="热岛的成因"' in html


ZH_TITLES = ["热岛的成因", "对健康的影响", "缓解的办法", "城市规划的作用", "未来展望"]


def zh_reply(request, wanted: int | None = None) -> str:
    """A Chinese answer: an outline, a title, or about as many characters as the prompt asks for ("约N字")."""
    prompt = "\n".join(m.content for m in request.messages)
    if request.purpose == "outline":
        return "\n".join(f"{i}. {t}" for i, t in enumerate(ZH_TITLES, 1))
    if request.purpose == "title":
        return "《城市为何更热》"
    n = wanted or int((re.findall(r"约(\d+)字", prompt) or ["200"])[-1])
    first, second = PARA.split("。")[:2]
    sentences = [f"第{k}点，{first}。第{k}个原因是{second}。" for k in range(1, 300)]  # no sentence repeats
    out = ""
    for s in sentences:
        if words(out) >= n:
            break
        out += s
    return out


def test_chinese_through_the_fake_backend(fake_backend, tmp_path):
    real_generate = type(fake_backend).generate

    def generate(self, requests):
        replies = [zh_reply(r) for r in requests]
        real_generate(self, requests)  # records the call
        return [Completion(text=t.removeprefix(r.prefill), prompt_tokens=10, completion_tokens=len(t),
                           finish_reason="stop", seconds=0.01) for r, t in zip(requests, replies)]

    fake_backend.generate = generate.__get__(fake_backend)
    spec = ArticleSpec.build(topic="城市热岛效应", words=1000, sections=4, backend="fake")
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    record, md = result.record, result.files["article.md"].read_text()
    prompts = [m.content for r in fake_backend.requests for m in r.messages if m.role == "user"]
    assert all("请写第" in p or "大纲" in p for p in prompts), prompts  # Chinese templates (a pack choice: base/zh/)
    assert record["templates"]["section"]["file"] == "base/zh/section.j2"
    assert record["lang"] == "zh" and record["length_unit"] == "characters"
    assert record["evaluation"]["length_score"] >= 90 and not record["empty_sections"]
    assert result.folder.name == "城市热岛效应"
    assert "## 目录" in md and "(#热岛的成因)" in md and "(#-)" not in md
    assert '<html lang="zh">' in result.files["article.html"].read_text()


class _ChineseChat(BaseHTTPRequestHandler):
    """A stand-in OpenAI-compatible server that answers every chat request in Chinese."""

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        from aigc.backends.base import GenerationRequest, Message

        messages = tuple(Message(role=m["role"], content=m["content"]) for m in body["messages"])
        prompt = messages[-1].content
        purpose = "section" if "请写第" in prompt else "outline" if "大纲" in prompt else "title"
        text = zh_reply(GenerationRequest(messages=messages, max_new_tokens=10, purpose=purpose))
        data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 9, "completion_tokens": len(text), "total_tokens": 9}})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data.encode())))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def chinese_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChineseChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_chinese_through_a_real_openai_compatible_server(chinese_server, tmp_path):
    """The path `aigc write "城市热岛效应"` took when every section came back empty: now no text is lost."""
    from click.testing import CliRunner

    from aigc.cli import main

    result = CliRunner().invoke(main, ["write", "城市热岛效应", "--backend", "openai", "--model", "local",
                                       "--base-url", chinese_server, "--words", "600",
                                       "--outputs", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    summary = next(ln for ln in result.output.splitlines() if ln.startswith("Written"))
    assert "characters" in summary and "WARNING" not in summary
    folder = tmp_path / "out" / "城市热岛效应"
    record = json.loads((folder / "article.json").read_text())
    assert record["sections"] and all(s["words"] >= 40 for s in record["sections"])
    assert record["evaluation"]["length_score"] >= 90
    assert length_score(600, record["body_words"]) == pytest.approx(record["evaluation"]["length_score"])
    md = (folder / "article.md").read_text()
    assert "第2个原因是它的成因包括建筑密集、绿地减少和人为热排放等。" in md and "(#-)" not in md
