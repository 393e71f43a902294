"""The Prefect article flow with a fake backend: stages as tasks, caching across runs keyed on templates."""

import json
import uuid

import pytest

pytestmark = pytest.mark.slow  # starts Prefect's temporary API server once per session (15-25 s)


@pytest.fixture
def topic():
    return f"Flow test {uuid.uuid4().hex[:8]}"  # fresh inputs: nothing cached from other tests


def run(topic, tmp_path, **kw):
    from flows.article import article_flow

    return article_flow(topic=topic, sections=3, words=120, backend="fake", outputs_dir=str(tmp_path / "out"), **kw)


def test_second_run_is_cached_and_makes_no_model_call(fake_backend, topic, tmp_path):
    first = run(topic, tmp_path)
    assert first["status"] == "written"
    assert first["steps"] == {"outline": "Completed", "sections": "Completed"}
    calls = len(fake_backend.calls)
    assert calls == 3  # one outline call, one batch of sections, their spare step (the fake's replies are short)

    second = run(topic, tmp_path)
    assert second["steps"] == {"outline": "Cached", "sections": "Cached"}
    assert len(fake_backend.calls) == calls  # no model call at all
    assert second["status"] == "unchanged" and second["folder"] == first["folder"]


def test_editing_the_section_template_regenerates_sections_only(fake_backend, topic, tmp_path, templates_copy):
    run(topic, tmp_path, templates_dir=str(templates_copy))
    section = templates_copy / "article" / "section.j2"
    section.write_text(section.read_text() + "{% block voice %}You write very short sentences.{% endblock %}\n")
    again = run(topic, tmp_path, templates_dir=str(templates_copy))
    assert again["steps"] == {"outline": "Cached", "sections": "Completed"}
    assert "You write very short sentences." in fake_backend.calls[-1][0].messages[0].content
    # a different article (its section template changed): a new folder, the first one kept
    assert again["status"] == "renamed"
    record = json.loads((tmp_path / "out" / again["folder"].rsplit("/", 1)[1] / "article.json").read_text())
    assert record["templates"]["section"]["file"] == "article/section.j2"


def test_editing_the_title_template_asks_a_brief_only_piece_for_its_title_again(fake_backend, tmp_path,
                                                                                 templates_copy):
    from flows.article import article_flow

    brief = f"Draft a note to parents about the school trip on Friday ({uuid.uuid4().hex[:8]})."

    def run_brief():
        return article_flow(brief=brief, words=80, style="email", backend="fake", outputs_dir=str(tmp_path / "out"),
                            templates_dir=str(templates_copy))

    assert run_brief()["steps"]["outline"] == "Completed"
    assert run_brief()["steps"]["outline"] == "Cached"
    title = templates_copy / "base" / "title.j2"
    title.write_text(title.read_text() + "\nKeep it under six words.")
    assert run_brief()["steps"]["outline"] == "Completed"
    assert [r.purpose for r in fake_backend.requests].count("title") == 2  # asked again, not taken from the cache


def test_backend_errors_are_not_retried_by_prefect(fake_backend, topic, tmp_path):
    """One retry layer: the backend retries its own requests (openai: max_retries); the flow's steps never do."""
    from aigc.errors import BackendError

    for error in (BackendError("401 Unauthorized", retryable=False), BackendError("503 Unavailable", retryable=True)):
        fake_backend.fail = error
        fake_backend.calls.clear()
        with pytest.raises(BackendError, match=str(error)):
            run(topic, tmp_path)
        assert len(fake_backend.calls) == 1  # the outline task ran once


def test_cli_write_runs_the_flow_and_prints_the_files(fake_backend, topic, tmp_path):
    from click.testing import CliRunner

    from aigc.cli import main

    result = CliRunner().invoke(main, ["write", topic, "--backend", "fake", "--sections", "2", "--words", "80",
                                       "--outputs", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "Written:" in result.output
    folder = tmp_path / "cli" / topic.lower().replace(" ", "-")
    for name in ("article.md", "article.html", "article.json"):
        assert str(folder / name) in result.output and (folder / name).is_file()


def test_cli_runs_go_without_prefect_heartbeat_unless_the_user_set_one(monkeypatch, fake_backend, topic, tmp_path):
    """The heartbeat thread made every in-process run wait up to 1 s at its end; a user's own setting wins."""
    import threading

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    from flows.common import in_process_run

    started = []
    real_start = threading.Thread.start
    # what each thread will run, noted at its start (a finished thread forgets its arguments)
    monkeypatch.setattr(threading.Thread, "start",
                        lambda self: started.append(repr(getattr(self, "_args", ()))) or real_start(self))

    def heartbeat_threads():
        return [args for args in started if "heartbeat_loop" in args]

    assert get_current_settings().flows.heartbeat_frequency is not None  # Prefect's default: on
    with in_process_run():
        assert get_current_settings().flows.heartbeat_frequency is None
        run(topic, tmp_path)
    assert heartbeat_threads() == []
    run(topic, tmp_path)  # outside it: Prefect's own way
    assert len(heartbeat_threads()) == 1
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):  # as if set in a profile or the env
        with in_process_run():
            assert get_current_settings().flows.heartbeat_frequency == 60
