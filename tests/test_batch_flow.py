"""The batch flow end to end on a Prefect API with fake backends: failures isolated, bounded concurrency, idempotent re-runs."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
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
    """Canned outlines and sections; counts requests per topic and records each call's (purpose, topics)."""

    name = "fake"
    supports_prefill = False
    max_concurrent_articles = 2
    calls: Counter = Counter()
    batches: list = []

    def __init__(self, **options):
        self.options = options

    @property
    def model_id(self) -> str:
        return "fake-model"

    def generate(self, requests):
        out, topics = [], []
        for r in requests:
            prompt = r.messages[-1].content if r.messages else r.prompt
            topic = next((t for t in TOPICS if t in prompt), "?")  # to count requests per article, not to reply
            type(self).calls[topic] += 1
            topics.append(topic)
            if r.purpose == "outline":
                out.append(Completion(text="1. Background\n2. What changes\n3. What to do", completion_tokens=9))
            else:
                out.append(Completion(text=SECTION_TEXT, completion_tokens=30))
        type(self).batches.append((requests[0].purpose, sorted(set(topics))))
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
    FakeBackend.batches.clear()
    runs = []
    state = batch_flow(batch_file=str(root / "b.yaml"), outputs_dir=str(outputs), return_state=True)
    runs.append((state, state.result(raise_on_failure=False), Counter(FakeBackend.calls),
                 (outputs / "test-batch" / "index.md").read_text(), (outputs / "test-batch" / "index.html").read_text(),
                 list(FakeBackend.batches)))
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
    state, summary, calls, index, html, batches = runs[0]
    assert state.is_failed() and "1 of 3 items failed" in state.message
    # the two fake articles were written together: one call for both outlines, then one for all six sections, then
    # one spare step for all six (the fake's replies fall well short of the sections' length)
    assert batches == [("outline", ["Snow plow routes", "Urban heat islands"]),
                       ("section", ["Snow plow routes", "Urban heat islands"]),
                       ("section", ["Snow plow routes", "Urban heat islands"])]
    assert summary["counts"] == {"written": 2, "failed": 1}
    statuses = [(r["topic"], r["status"]) for r in summary["items"]]
    assert statuses == [("Urban heat islands", "written"), ("Snow plow routes", "written"), ("Library cards", "failed")]
    assert "injected fault" in summary["items"][2]["error"]
    # the broken item was not retried
    # 4 outline candidates, 3 sections and their 3 spare steps each
    assert calls["Urban heat islands"] == 10 and calls["Snow plow routes"] == 10 and calls["broken"] == 1
    assert "| 3 | Library cards | article | **failed** |" in index and "injected fault" in index
    assert "[urban-heat-islands](urban-heat-islands/article.md)" in index
    assert 'href="snow-plow-routes/article.html"' in html and "injected fault" in html


def test_rerun_writes_only_the_missing_article(batch_run):
    folder, runs = batch_run
    state, summary, calls, index, _, _ = runs[1]
    assert state.is_completed()
    assert [r["status"] for r in summary["items"]] == ["unchanged", "unchanged", "written"]
    # no model call for the finished articles: only the fixed item generated (4 outline candidates, 3 sections, 3 spare)
    assert calls == Counter({"Library cards": 10})
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


def test_waves_group_items_by_backend_and_bound_their_size():
    from aigc import batch as batches
    from flows.batch import _waves

    class Item:
        def __init__(self, index):
            self.index = index

    def plan(index, lane, limit):
        return batches.Plan(item=Item(index), key="", lane=lane, limit=limit, done=None)

    queue = [plan(1, "local", 3), plan(2, "api", 4), plan(3, "local", 3), plan(4, "local", 3), plan(5, "local", 3)]
    waves = [[p.item.index for p in wave] for wave in _waves(queue, None)]
    assert waves == [[1, 3, 4], [5], [2]]  # the local model's bound: as many as fill one call
    assert [[p.item.index for p in wave] for wave in _waves(queue, 2)] == [[1, 3], [4, 5], [2]]  # --concurrency
