"""The batch flow end to end on a Prefect API with fake backends: failures isolated, bounded concurrency, idempotent re-runs."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from collections import Counter
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="aigc-batch-flow-"))
atexit.register(shutil.rmtree, _TMP, True)
if not os.environ.get("PREFECT_API_URL"):  # set before Prefect is imported; a session conftest may do it too
    os.environ.setdefault("PREFECT_HOME", str(_TMP / "prefect"))
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(_TMP / "results"))
os.environ.setdefault("AIGC_OUTPUTS_DIR", str(_TMP / "outputs"))
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from aigc.backends import register_backend  # noqa: E402
from aigc.backends.base import Backend, Completion  # noqa: E402
from aigc.errors import BackendError  # noqa: E402

SECTION_TEXT = ("This section explains the matter plainly, with a concrete example from a city. "
                "It ends with what a reader can do next, and where to learn more about it.")


class FakeBackend(Backend):
    """Canned outlines and sections; counts calls per topic; can require a number of articles at once."""

    name = "fake"
    supports_prefill = False
    max_concurrent_articles = 2
    calls: Counter = Counter()
    barrier: threading.Barrier | None = None
    announced: list = []  # what the batch flow said of each article it started (see Backend.article_coming)

    def article_coming(self):
        class Coming:
            cancelled = False

            def cancel(self):
                self.cancelled = True

        type(self).announced.append(Coming())
        return type(self).announced[-1]

    def __init__(self, **options):
        self.options = options

    @property
    def model_id(self) -> str:
        return "fake-model"

    def generate(self, requests):
        out = []
        for r in requests:
            prompt = r.messages[-1].content if r.messages else r.prompt
            topic = next((t for t in TOPICS if t in prompt), "?")
            type(self).calls[topic] += 1
            if r.stop:  # the outline request
                if self.barrier is not None:
                    self.barrier.wait()  # fails (BrokenBarrierError) unless two articles run at the same time
                out.append(Completion(text="1. Background\n2. What changes\n3. What to do", completion_tokens=9))
            else:
                out.append(Completion(text=SECTION_TEXT, completion_tokens=30))
        return out


class BrokenBackend(FakeBackend):
    """A backend whose service is down for good (a non-retryable error on every call)."""

    name = "flaky"
    max_concurrent_articles = 1

    def generate(self, requests):
        type(self).calls["broken"] += 1
        raise BackendError("flaky: the service refused the request (injected fault)", retryable=False)


class FixedBackend(FakeBackend):
    name = "flaky"
    max_concurrent_articles = 1


TOPICS = ("Urban heat islands", "Snow plow routes", "Library cards")
BATCH = """\
name: Test Batch
defaults:
  sections: 3
  words: 90
  backend: fake
items:
  - topic: Urban heat islands
  - topic: Snow plow routes
    style: report
  - topic: Library cards
    backend: flaky
"""


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    """Run the batch three times: flaky down, flaky fixed, nothing to do. Returns the summaries and call counts."""
    from flows.batch import batch_flow

    root = tmp_path_factory.mktemp("batch")
    (root / "b.yaml").write_text(BATCH)
    outputs = root / "out"
    register_backend("fake", FakeBackend)
    register_backend("flaky", BrokenBackend)
    FakeBackend.calls.clear()
    FakeBackend.barrier = threading.Barrier(2, timeout=60)
    FakeBackend.announced.clear()
    runs = []
    state = batch_flow(batch_file=str(root / "b.yaml"), outputs_dir=str(outputs), return_state=True)
    runs.append((state, state.result(raise_on_failure=False), Counter(FakeBackend.calls),
                 (outputs / "test-batch" / "index.md").read_text(), (outputs / "test-batch" / "index.html").read_text(),
                 [c.cancelled for c in FakeBackend.announced]))
    FakeBackend.barrier = None
    register_backend("flaky", FixedBackend)  # the outage is over; same backend name, same model: same inputs
    half = outputs / "test-batch" / ".tmp-library-cards-killed"  # what a run killed while writing leaves
    half.mkdir()
    (half / "article.md").write_text("half")
    for _ in range(2):
        FakeBackend.calls.clear()
        state = batch_flow(batch_file=str(root / "b.yaml"), outputs_dir=str(outputs), return_state=True)
        runs.append((state, state.result(raise_on_failure=False), Counter(FakeBackend.calls),
                     (outputs / "test-batch" / "index.md").read_text(), None, None))
    return outputs / "test-batch", runs


def test_one_failure_does_not_stop_the_others(batch_run):
    folder, runs = batch_run
    state, summary, calls, index, html, announced = runs[0]
    assert state.is_failed() and "1 of 3 items failed" in state.message
    assert announced == [True, True, True], "each item's article was announced to its backend, and let go when done"
    assert summary["counts"] == {"written": 2, "failed": 1}
    statuses = [(r["topic"], r["status"]) for r in summary["items"]]
    assert statuses == [("Urban heat islands", "written"), ("Snow plow routes", "written"), ("Library cards", "failed")]
    assert "injected fault" in summary["items"][2]["error"]
    # both fake articles ran at once (the barrier), and the broken item was not retried
    assert calls["Urban heat islands"] == 4 and calls["Snow plow routes"] == 4 and calls["broken"] == 1
    assert "| 3 | Library cards | article | **failed** |" in index and "injected fault" in index
    assert "[urban-heat-islands](urban-heat-islands/article.md)" in index
    assert 'href="snow-plow-routes/article.html"' in html and "injected fault" in html


def test_rerun_writes_only_the_missing_article(batch_run):
    folder, runs = batch_run
    state, summary, calls, index, _, _ = runs[1]
    assert state.is_completed()
    assert [r["status"] for r in summary["items"]] == ["unchanged", "unchanged", "written"]
    # no model call for the finished articles: only the fixed item generated (1 outline + 1 batch of 3 sections)
    assert calls == Counter({"Library cards": 4})
    articles = sorted(p.parent.name for p in folder.glob("*/article.json"))
    assert articles == ["library-cards", "snow-plow-routes", "urban-heat-islands"]
    row = summary["items"][2]
    assert row["words"] > 0 and row["folder"].endswith("library-cards")


def test_third_run_does_nothing_and_the_index_lists_every_article(batch_run):
    folder, runs = batch_run
    state, summary, calls, index, _, _ = runs[2]
    assert state.is_completed() and summary["counts"] == {"unchanged": 3}
    assert sum(calls.values()) == 0
    for slug in ("urban-heat-islands", "snow-plow-routes", "library-cards"):
        assert f"]({slug}/article.md)" in index
    assert not list(folder.glob(".tmp-*")) and not (folder / ".lock").exists()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["library-cards", "snow-plow-routes",
                                                                      "urban-heat-islands"]


def test_lane_limit_apis_follow_concurrency_local_models_fill_one_call_at_most():
    from aigc import batch as batches
    from flows.batch import _lane_limit

    def plan(limit: int):
        return batches.Plan(item=None, key="", lane="x", limit=limit, done=None)

    assert [_lane_limit(plan(4), c) for c in (None, 1, 8)] == [4, 1, 8]  # an API: --concurrency rules
    assert [_lane_limit(plan(1), c) for c in (None, 8)] == [1, 1]  # a backend that runs one article at a time
    ceiling = batches.Plan(item=None, key="", lane="local", limit=5, done=None, ceiling=True)
    assert [_lane_limit(ceiling, c) for c in (None, 2, 8)] == [5, 2, 5]  # a local model: what fills one call, or fewer
