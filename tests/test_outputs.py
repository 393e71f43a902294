"""Output folders: safe names, atomic writes, and never a silent overwrite."""

import json

import pytest

from aigc.outputs import slugify, write_article_files


def files(key="k1", text="hello"):
    return {"article.md": text, "article.html": f"<p>{text}</p>", "article.json": json.dumps({"inputs_key": key})}


@pytest.mark.parametrize("topic,slug", [
    ("../../etc/x", "etc-x"),
    ("Urban Heat Islands: 2026!", "urban-heat-islands-2026"),
    ("Café naïve", "cafe-naive"),
    ("/", "article"),
    ("{{ 7*7 }}", "7-7"),
])
def test_slugify_stays_a_plain_name(topic, slug):
    assert slugify(topic) == slug


def test_topic_with_dotdot_stays_inside_outputs(tmp_path):
    root = tmp_path / "outputs"
    folder, status = write_article_files(root, "../../etc/x", files(), inputs_key="k1")
    assert status == "written"
    assert folder.parent == root and folder.name == "etc-x"
    assert not (tmp_path / "etc").exists()


def test_same_inputs_are_not_written_twice(tmp_path):
    root = tmp_path / "outputs"
    first, _ = write_article_files(root, "heat", files(), inputs_key="k1")
    again, status = write_article_files(root, "heat", files(text="other run"), inputs_key="k1")
    assert (again, status) == (first, "unchanged")
    assert (first / "article.md").read_text() == "hello"


def test_a_different_article_gets_a_new_folder_and_keeps_the_old(tmp_path):
    root = tmp_path / "outputs"
    first, _ = write_article_files(root, "heat", files(), inputs_key="k1")
    second, status = write_article_files(root, "heat", files("k2", "new"), inputs_key="k2")
    assert status == "renamed" and second.name == "heat-2"
    assert (first / "article.md").read_text() == "hello"
    third, status = write_article_files(root, "heat", files("k3", "newest"), inputs_key="k3", overwrite=True)
    assert status == "replaced" and third == first
    assert (first / "article.md").read_text() == "newest"


def test_no_temporary_folder_is_left_behind(tmp_path, monkeypatch):
    root = tmp_path / "outputs"
    import aigc.outputs as outputs

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", broken_fsync)
    with pytest.raises(outputs.OutputError, match="cannot write the article"):
        write_article_files(root, "heat", files(), inputs_key="k1")
    assert list(root.iterdir()) == []
