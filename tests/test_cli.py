"""CLI errors are one clear line and a non-zero exit, found before any model or Prefect start-up."""

from click.testing import CliRunner

from aigc.cli import main


def invoke(*args, **kw):
    return CliRunner().invoke(main, list(args), **kw)


def error_line(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_empty_topic():
    assert "topic: the topic is empty" in error_line(invoke("write", "   "))


def test_unknown_style():
    line = error_line(invoke("write", "Tides", "--style", "poem"))
    assert "unknown style 'poem'; choose one of: article, blog, email, letter, news, report, story, summary" in line


def test_template_syntax_error_names_file_and_line(templates_copy):
    (templates_copy / "news" / "outline.j2").write_text('{% extends "base/outline.j2" %}\n{% block kind %}{{ a story{% endblock %}\n')
    line = error_line(invoke("write", "Tides", "--style", "news"))
    assert f"{templates_copy / 'news' / 'outline.j2'}:2:" in line


def test_template_with_undefined_variable(templates_copy):
    (templates_copy / "blog" / "section.j2").write_text(
        '{% extends "base/section.j2" %}\n{% block voice %}Write for {{ readers }}.{% endblock %}\n'
    )
    line = error_line(invoke("write", "Tides", "--style", "blog"))
    assert "'readers' is undefined" in line and f"{templates_copy / 'blog' / 'section.j2'}:2:" in line
    # the hint names a command that exists, and that command flags the variable
    assert "`aigc templates vars blog` lists the variables" in line
    listing = invoke("templates", "vars", "blog")
    assert listing.exit_code == 0, listing.output
    assert "readers        NOT PROVIDED" in listing.output


def test_templates_vars_lists_what_each_step_provides_and_uses(templates_copy):
    result = invoke("templates", "vars", "report")
    assert result.exit_code == 0, result.output
    blocks = {b.splitlines()[0].split(":")[0]: b for b in result.output.split("\n\n") if b.startswith("report /")}
    assert set(blocks) == {"report / outline", "report / section", "report / document"}

    def used(step):
        return {ln.split()[0] for ln in blocks[f"report / {step}"].splitlines()[1:] if ln.split()[1:2] == ["used"]}

    def listed(step):  # provided by the step (not the optional or missing ones flagged after them)
        return {ln.split()[0] for ln in blocks[f"report / {step}"].splitlines()[1:]
                if "optional:" not in ln and "NOT PROVIDED" not in ln}

    assert listed("outline") == {"topic", "brief", "lang", "language", "style", "n_sections", "words", "section_words"}
    assert listed("section") == listed("outline") | {"outline", "section_title", "section_index", "is_first", "is_last"}
    assert {"title", "date", "model", "sections"} <= listed("document")
    assert used("outline") == {"topic", "n_sections", "brief", "lang", "language"}
    assert {"section_title", "section_index", "is_first", "is_last", "outline"} <= used("section")
    # data-driven: a template that starts using a variable shows it as used
    (templates_copy / "report" / "outline.j2").write_text(
        '{% extends "base/outline.j2" %}\n{% block outline_guidance %}About {{ words }} words.{% endblock %}\n')
    again = invoke("templates", "vars", "report", "--templates-dir", str(templates_copy))
    assert "  words          used  800" in again.output.split("report / section")[0]
    assert "unknown style 'poem'" in error_line(invoke("templates", "vars", "poem"))
    everything = invoke("templates", "vars")
    assert all(f"{style} / document" in everything.output for style in ("article", "blog", "news", "report"))


def test_topic_with_template_syntax_stays_literal():
    result = invoke("templates", "render", "article", "--topic", "Heat {{ 7*7 }}", "-n", "2")
    assert result.exit_code == 0, result.output
    assert 'about "Heat {{ 7*7 }}"' in result.output and "49" not in result.output


def test_openai_without_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    line = error_line(invoke("write", "Tides", "--backend", "openai", "--model", "gpt-4o-mini"))
    assert "OPENAI_API_KEY" in line


def test_unknown_backend():
    assert "unknown backend 'gpt5'" in error_line(invoke("write", "Tides", "--backend", "gpt5"))


def test_bad_outline_file(tmp_path):
    assert "no such file" in error_line(invoke("write", "Tides", "--outline", str(tmp_path / "nope.txt")))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert f"{empty}: the outline is empty" in error_line(invoke("write", "Tides", "--outline", str(empty)))


def test_bad_local_option_names_it():
    line = error_line(invoke("write", "Tides", "--base-url", "http://127.0.0.1:9/v1"))
    assert "base_url" in line


def test_templates_list_and_render():
    listing = invoke("templates", "list")
    assert listing.exit_code == 0
    for style in ("article", "blog", "news", "report"):
        assert f"  {style}" in listing.output
    rendered = invoke("templates", "render", "report", "--topic", "Urban heat islands", "-n", "3")
    assert rendered.exit_code == 0
    assert rendered.output.count("=== section") == 3
    assert "Begin with a summary and end with recommendations." in rendered.output


def test_backend_options_are_validated_by_the_backend():
    line = error_line(invoke("write", "Tides", "-o", "max_batch_sise=8"))
    assert "unknown option 'max_batch_sise'" in line
    assert "KEY=VALUE" in error_line(invoke("write", "Tides", "-o", "max_batch_size"))


def test_aigc_errors_are_logged_without_traceback():
    import logging

    from aigc.cli.common import _NoAigcTracebacks
    from aigc.errors import BackendError

    def record(exc):
        try:
            raise exc
        except Exception:
            import sys

            return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())

    aigc_record, other_record = record(BackendError("401")), record(KeyError("bug"))
    assert _NoAigcTracebacks().filter(aigc_record) and aigc_record.exc_info is None
    assert _NoAigcTracebacks().filter(other_record) and other_record.exc_info is not None  # real bugs keep theirs


def test_batch_and_serve_check_their_inputs_first(tmp_path):
    assert "nope.yaml" in error_line(invoke("batch", str(tmp_path / "nope.yaml")))
    assert "unknown time zone 'Mars/Base'" in error_line(invoke("serve", "--timezone", "Mars/Base"))
    from flows.deploy import DEFAULT_BATCH, DEFAULT_CRON

    help_text = invoke("serve", "--help").output
    assert f"[default: {DEFAULT_CRON}]" in help_text and DEFAULT_BATCH in help_text
