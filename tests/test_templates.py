"""Style packs: inheritance, strict variables, the sandbox, errors with file and line, content hashes."""

import pytest

from aigc.errors import ConfigError, TemplateError
from aigc.spec import ArticleSpec
from aigc.templates import TemplateStore


def test_the_style_packs_and_their_files():
    store = TemplateStore()
    assert store.styles() == ["article", "blog", "email", "letter", "news", "report", "story", "summary"]
    assert store.template_name("report", "outline") == "report/outline.j2"


def test_a_new_style_is_a_small_override(templates_copy):
    (templates_copy / "brief").mkdir()
    (templates_copy / "brief" / "section.j2").write_text(
        '{% extends "base/section.j2" %}\n{% block voice %}You write in short bullet-free sentences.{% endblock %}\n'
    )
    store = TemplateStore(templates_copy)
    assert "brief" in store.styles()
    assert store.template_name("brief", "outline") == "base/outline.j2"  # inherited
    spec = ArticleSpec(topic="Tides", style="brief", sections=2)
    ctx = spec.template_context(outline=["A", "B"], section_title="A", section_index=1, is_first=True, is_last=False)
    messages = store.render_messages(store.template_name("brief", "section"), ctx).messages
    assert messages[0].content.endswith("You write in short bullet-free sentences.")
    assert 'Write section 1, "A"' in messages[1].content


def test_outline_prompt_has_prefill_and_user_text_stays_literal():
    store = TemplateStore()
    spec = ArticleSpec(topic="Heat {{ 7*7 }} {% if 1 %}x{% endif %}", sections=4)
    rendered = store.render_messages(store.template_name("article", "outline"), spec.template_context())
    roles = [m.role for m in rendered.messages]
    assert roles == ["system", "user", "assistant"]
    assert rendered.messages[-1].content == "1."
    assert "Heat {{ 7*7 }} {% if 1 %}x{% endif %}" in rendered.messages[1].content
    assert "49" not in rendered.messages[1].content
    assert "exactly 4 short section titles" in rendered.messages[1].content


def test_unknown_style_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown style 'poem'; choose one of: article, blog, email, letter, news, report, story, summary"):
        TemplateStore().check_style("poem")


def test_syntax_error_names_file_and_line(templates_copy):
    (templates_copy / "news" / "section.j2").write_text('{% extends "base/section.j2" %}\n\n{% block voice %}{{ oops {% endblock %}\n')
    store = TemplateStore(templates_copy)
    with pytest.raises(TemplateError) as err:
        store.render_messages("news/section.j2", {})
    assert f"{templates_copy / 'news' / 'section.j2'}:3:" in str(err.value)


def test_undefined_variable_names_file_line_and_variable(templates_copy):
    (templates_copy / "blog" / "outline.j2").write_text(
        '{% extends "base/outline.j2" %}\n{% block persona %}a blogger for {{ audience }}{% endblock %}\n'
    )
    store = TemplateStore(templates_copy)
    spec = ArticleSpec(topic="Tides", style="blog")
    with pytest.raises(TemplateError) as err:
        store.render_messages("blog/outline.j2", spec.template_context())
    message = str(err.value)
    assert "'audience' is undefined" in message
    assert f"{templates_copy / 'blog' / 'outline.j2'}:2:" in message


def test_sandbox_blocks_attribute_escapes(templates_copy):
    (templates_copy / "blog" / "outline.j2").write_text(
        "{% block user %}{{ topic.__class__.__mro__[1].__subclasses__() }}{% endblock %}\n"
    )
    store = TemplateStore(templates_copy)
    with pytest.raises(TemplateError, match="sandbox|unsafe|undefined"):
        store.render_messages("blog/outline.j2", ArticleSpec(topic="x").template_context())


def test_hash_follows_content_of_the_template_and_its_base(templates_copy):
    store = TemplateStore(templates_copy)
    before = store.style_hashes("report")
    base = templates_copy / "base" / "section.j2"
    base.write_text(base.read_text() + "\n")
    after = store.style_hashes("report")
    assert after["section"] != before["section"]
    assert after["outline"] == before["outline"]
    assert after["document"] == before["document"]


def test_report_document_numbers_headings_and_links_them():
    from aigc.assemble import markdown_to_html, render_document

    spec = ArticleSpec(topic="Heat", style="report", sections=2)
    md = render_document(spec, [{"title": "Summary", "body": "Short."}, {"title": "What next?", "body": "More."}],
                         TemplateStore(), model_id="m", date="2026-01-01")
    assert "## 1. Summary" in md and "## 2. What next?" in md
    html = markdown_to_html(md)
    assert "[What next?](#2-what-next)" in md
    assert 'id="2-what-next"' in html


def test_variables_a_template_reads_through_its_parents(templates_copy):
    (templates_copy / "news" / "section.j2").write_text(
        '{% extends "base/section.j2" %}\n'
        '{% block voice %}{% if desk is defined %}For the {{ desk }} desk.{% endif %} {{ editor }}{% endblock %}\n'
    )
    store = TemplateStore(templates_copy)
    read, optional = store.variables("news/section.j2")
    assert {"topic", "section_title", "is_last", "desk", "editor"} <= read  # base's and its own
    assert optional == {"desk", "continuation", "passages"}  # base's own optional ones (long sections, sources)
    assert store.sources("news/section.j2") == {"news/section.j2", "base/section.j2", "base/brief.j2",
                                                "base/closing.j2"}
