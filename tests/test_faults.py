"""Faults a careful tester meets, each one clear line and a non-zero exit, with nothing lost or half-written.

Real parts where they matter: a real tmpfs filled to the last byte or remounted read-only (as root; else a path
under a file), a real HTTP server on loopback behind a URL with a password, the Prefect API the tests use.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from aigc.cli import main


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def last_line(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    return [ln for ln in result.output.splitlines() if ln.strip()][-1]


@pytest.fixture
def tmpfs(tmp_path):
    """A real 256 KiB tmpfs (root only); skips where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:80]})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_an_outputs_folder_under_a_file_is_reported_before_any_generation(fake_backend, tmp_path):
    (tmp_path / "afile").write_text("x")
    line = last_line(invoke("write", "Tides", "--backend", "fake", "--outputs", str(tmp_path / "afile" / "out")))
    assert line.startswith(f"Error: cannot write to the outputs folder {tmp_path / 'afile' / 'out'}")
    assert fake_backend.calls == []  # nothing generated first


def test_a_read_only_outputs_folder_is_reported_before_any_generation(fake_backend, tmpfs):
    # root ignores permission bits, so the folder is on a file system mounted read-only
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    line = last_line(invoke("write", "Tides", "--backend", "fake", "--outputs", str(tmpfs / "out")))
    assert line == (f"Error: cannot write to the outputs folder {tmpfs / 'out'}: not writable (permissions or a "
                    "read-only file system); choose another --outputs folder")
    assert fake_backend.calls == []
    batch = tmpfs.parent / "b.yaml"
    batch.write_text("name: b\ndefaults: {backend: fake}\nitems: [Tides]\n")
    line = last_line(invoke("batch", str(batch), "--outputs", str(tmpfs / "out")))
    assert line.startswith(f"Error: cannot write to the outputs folder {tmpfs / 'out' / 'b'}: not writable")
    assert fake_backend.calls == []


def test_a_full_disk_while_writing_leaves_nothing_half_written(fake_backend, tmpfs):
    stat = os.statvfs(tmpfs)  # leave two pages: the probe passes, the article's three files do not fit
    (tmpfs / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 2 * 4096))
    result = invoke("write", "Tides", "--backend", "fake", "--sections", "4", "--words", "600",
                    "--outputs", str(tmpfs / "out"))
    line = last_line(result)
    assert "no space left on the device; free some space and run again" in line, result.output
    assert [p.name for p in (tmpfs / "out").iterdir()] in ([], [".aigc-write.lock"])  # no .tmp- folder left
    (tmpfs / "filler").unlink()
    again = invoke("write", "Tides", "--backend", "fake", "--sections", "4", "--words", "600",
                   "--outputs", str(tmpfs / "out"))
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (tmpfs / "out" / "tides").iterdir()) == ["article.html", "article.json", "article.md"]


def test_a_bad_server_patience_is_one_line_before_anything_is_submitted(fake_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never asked: the check comes first
    monkeypatch.setenv("AIGC_SERVER_PATIENCE", "two minutes")
    batch = tmp_path / "b.yaml"
    batch.write_text("name: b\ndefaults: {backend: fake}\nitems: [Tides]\n")
    line = last_line(invoke("batch", str(batch), "--distribute", "--outputs", str(tmp_path / "out")))
    assert line == ("Error: AIGC_SERVER_PATIENCE='two minutes': give the seconds to wait for a silent Prefect server, "
                    "e.g. 120")
    assert fake_backend.calls == []


def test_a_user_template_with_a_huge_range_is_one_line(templates_copy):
    (templates_copy / "news" / "outline.j2").write_text(
        '{% extends "base/outline.j2" %}\n{% block kind %}{{ range(99999999)|list|length }}{% endblock %}\n')
    line = last_line(invoke("templates", "render", "news", "--topic", "Tides"))
    assert "not allowed in the template sandbox: Range too big" in line and "news/outline.j2" in line


def test_a_missing_model_folder_is_reported_before_prefect_starts(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = invoke("write", "Tides", "--model", "/nonexistent")
    assert last_line(result) == ("Error: --model: model /nonexistent: no such folder; give a folder saved with "
                                 "save_pretrained(), a cached hub id, or 'embedded'")
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1  # no Prefect line before it


def test_control_characters_never_reach_the_files_or_the_index(fake_backend, tmp_path):
    batch = tmp_path / "nul.jsonl"
    batch.write_text('{"name": "nul", "defaults": {"backend": "fake", "sections": 2, "words": 80}}\n'
                     '{"topic": "Tides\\u0000 and\\u001b[31m moons\\u0007"}\n')
    result = invoke("batch", str(batch), "--outputs", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "nul"
    texts = [p.read_text() for p in folder.rglob("*") if p.is_file() and p.suffix in (".md", ".html", ".json")]
    assert len(texts) == 5  # three article files, two index files
    for text in texts:
        assert not any(ord(c) < 32 and c not in "\n\t" for c in text)
    assert json.loads((folder / "tides-and-31m-moons" / "article.json").read_text())["topic"] == "Tides and[31m moons"


class _Answers(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that answers every chat request with a short numbered list; records headers."""

    auth: list[str] = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["content-length"]))
        type(self).auth.append(self.headers.get("authorization", ""))
        data = json.dumps({
            "id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "1. Where tides come from\n2. Why they matter"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_a_password_in_base_url_is_used_and_never_stored(tmp_path, monkeypatch, caplog):
    import logging

    from aigc.credentials import AUTH_ENV

    monkeypatch.delenv(AUTH_ENV, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    caplog.set_level(logging.DEBUG)
    try:
        result = invoke("write", "Tides", "--backend", "openai", "--model", "m", "--sections", "2", "--words", "60",
                        "--base-url", url.replace("http://", "http://editor:hunter2-pw@"),
                        "--outputs", str(tmp_path / "out"))
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0, result.output
    assert _Answers.auth and set(_Answers.auth) == {"Basic " + base64.b64encode(b"editor:hunter2-pw").decode()}
    stored = [result.output, caplog.text] + [p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not [s for s in stored if "hunter2" in s]
    assert json.loads((tmp_path / "out" / "tides" / "article.json").read_text())["backend"]["base_url"] == url
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # the flow run's parameters, as the Prefect database holds them
        runs = client.read_flow_runs(limit=20)
    mine = [r for r in runs if r.parameters.get("topic") == "Tides" and r.parameters.get("backend") == "openai"]
    assert mine and all("hunter2" not in json.dumps(r.parameters) for r in mine)
    assert url in json.dumps(mine[0].parameters)  # the URL itself is kept, without the password
    artifacts_text = _artifacts_text()
    assert "hunter2" not in artifacts_text


def _artifacts_text() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return json.dumps([a.data for a in client.read_artifacts(limit=50)], default=str)


@pytest.mark.slow
def test_the_prefect_server_dying_mid_batch_ends_in_one_line_soon_and_loses_nothing(tmp_path):
    """`aigc batch` in its own process, its Prefect server (SQLite, loopback) SIGKILLed after the first article: the
    batch writes the rest without it, then ends with one line and exit 1, within a bound (it took ~8 minutes: the
    client's 5 retries per call, then minutes of undeliverable events at exit); run again, nothing is rewritten."""
    import sys
    import time

    from tests.servers import free_port, healthy, kill_tree, wait_until

    repo = Path(__file__).resolve().parent.parent
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AIGC_"))}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", HF_HUB_OFFLINE="1", PYTHONPATH=str(repo),
               AIGC_TEMPLATES_DIR=str(repo / "templates"))
    url = f"http://127.0.0.1:{port}/api"

    def start_server() -> subprocess.Popen:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                 "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: healthy(url) or (proc.poll() is not None and pytest.fail("the Prefect server exited")),
                   180, "the Prefect server")
        return proc

    items = "".join(f'\n  - topic: "Topic {i}: street life in a small city, part {i}"' for i in range(1, 7))
    batch = tmp_path / "b.yaml"
    batch.write_text('name: sd\ndefaults: {backend: "tests.plugins.worker_fake:WorkerFake", sections: 2, words: 80, '
                     f'backend_options: {{delay: 1.5}}}}\nitems:{items}\n')
    cmd = [sys.executable, "-c", "from aigc.cli import main; main()", "batch", str(batch), "--outputs",
           str(tmp_path / "out"), "--concurrency", "1"]
    folder = tmp_path / "out" / "sd"
    written = lambda: sorted(p.name for p in folder.glob("*/article.md")) if folder.is_dir() else []  # noqa: E731
    server = start_server()
    try:
        run = subprocess.Popen(cmd, env={**env, "PREFECT_API_URL": url}, cwd=repo, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while not written() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        kill_tree(server.pid)
        killed = time.monotonic()
        out, _ = run.communicate(timeout=400)
        after = time.monotonic() - killed
        assert run.returncode == 1, out[-3000:]
        last = out.rstrip().splitlines()[-1]
        assert last.startswith(f"Error: lost the Prefect server ({url})") and "run the same command again" in last, \
            out[-3000:]
        assert len(written()) == 6, (written(), out[-3000:])  # the batch wrote on without its server
        assert after < 120, after  # 6 x 3 s of work left at most, ~3 s a call's retries, ~15 s to give up
        server = start_server()
        again = subprocess.run(cmd, env={**env, "PREFECT_API_URL": url}, cwd=repo, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert "6 unchanged" in again.stdout, again.stdout[-2000:]
        shown = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        assert len(shown) == 6 + 2, shown  # six articles, index.md and index.html: nothing twice, nothing half-written
    finally:
        if server.poll() is None:
            kill_tree(server.pid)
    print(f"server killed after the first article: the batch wrote all 6 and ended {after:.0f} s later: {last}")
