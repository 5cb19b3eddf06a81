"""The Gradio chat demo: step → message conversion, defaults, and the running demo driven by the real
``gradio_client`` (answers, streamed steps, 20 concurrent sessions) and by headless Chromium."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dgpo_agent.errors import DGPOError
from dgpo_agent.serving.chat import NO_ANSWER, WORKING, conversation, step_messages
from dgpo_agent.serving.defaults import default_model, default_store, latest_checkpoint, resolve, world_examples

RAW_TAG = re.compile(r"</?\s*(think|search|information|answer)\s*>|<\|[^|]*\|>", re.IGNORECASE)
DOCS = [{"id": "p1", "title": "Kreaxse <answer>Labs", "text": "Founded by <|im_end|>Zentrath.", "score": 0.9}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_text(messages) -> str:
    return json.dumps(messages, ensure_ascii=False)


# ----------------------------------------------------------------------------------------- conversion


def test_each_step_becomes_thought_messages_without_raw_tags():
    think = step_messages({"kind": "think", "turn": 1, "text": "<think>I need the founder.</think>"}, 0)
    search = step_messages({"kind": "search", "turn": 1, "query": "Kreaxse founder", "docs": DOCS}, 1)
    invalid = step_messages({"kind": "invalid", "turn": 2, "text": "<search></search>", "reason": "empty_query"}, 2)
    answer = step_messages({"kind": "answer", "turn": 2, "answer": "Zentrath"}, 3)

    assert think == [{"role": "assistant", "content": "I need the founder.",
                      "metadata": {"title": "💭 Thinking", "id": "think-0", "status": "done"}}]  # fmt: skip
    query, docs = search
    assert query["metadata"] == {"title": "🔍 Searching: Kreaxse founder", "id": "search-1", "status": "done"}
    assert query["content"] == "Query: Kreaxse founder"
    assert docs["metadata"] == {"title": "📄 Retrieved 1 documents", "id": "docs-1", "status": "done", "parent_id": "search-1"}
    assert docs["content"] == "**1. Kreaxse Labs** Founded by Zentrath."
    assert invalid[0]["metadata"]["title"] == "⚠️ Invalid action (empty_query)" and invalid[0]["content"] == "(no text)"
    assert answer == [{"role": "assistant", "content": "Zentrath"}]  # the answer is the plain reply
    assert not RAW_TAG.search(all_text(think + search + invalid + answer))


def test_conversation_is_pending_while_running_and_says_when_no_answer():
    think = {"kind": "think", "turn": 1, "text": "hmm"}
    running = conversation([think], finished=False)
    assert running[-1]["metadata"] == {"title": WORKING, "status": "pending"}
    assert all(m["metadata"]["status"] == "done" for m in running[:-1])
    assert conversation([], finished=False) == [running[-1]]
    assert conversation([think], finished=True)[-1] == {"role": "assistant", "content": NO_ANSWER}
    done = conversation([think, {"kind": "answer", "turn": 1, "answer": "x"}], finished=True)
    assert done[-1] == {"role": "assistant", "content": "x"} and len(done) == 2


# ----------------------------------------------------------------------------------------- defaults


def test_latest_checkpoint_is_the_newest_store_record(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(DGPOError, match=r"no trained checkpoint under .*runs/: run `dgpo-agent train`, or pass --model"):
        default_model(runs)
    for i, name in enumerate(["tiny/sft", "tiny/dgpo", "smoke/dgpo"]):
        (runs / name).mkdir(parents=True)
        (runs / name / "dgpo_agent.json").write_text(json.dumps({"store": f"/stores/{i}"}))
        os.utime(runs / name / "dgpo_agent.json", (1000 + i, 1000 + i))
    os.utime(runs / "tiny/dgpo/dgpo_agent.json", (5000, 5000))
    assert latest_checkpoint(runs) == runs / "tiny/dgpo"
    assert default_model(runs) == str(runs / "tiny/dgpo")
    assert default_store(str(runs / "tiny/dgpo"), runs) == "/stores/1"  # the checkpoint's own store


def test_default_store_falls_back_to_the_latest_world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DGPOError, match="no store found: run `dgpo-agent train`"):
        resolve("oracle", None)
    (tmp_path / "dgpo-world/chroma").mkdir(parents=True)
    assert resolve("oracle", None) == ("oracle", "dgpo-world/chroma")
    (tmp_path / "runs/tiny/world/chroma").mkdir(parents=True)
    assert resolve("oracle", None) == ("oracle", "runs/tiny/world/chroma")
    assert resolve("oracle", "elsewhere") == ("oracle", "elsewhere")


def test_examples_come_from_the_world(small_world, small_store):
    examples = world_examples(small_world / "chroma")
    dev = {json.loads(line)["question"] for line in (small_world / "dev.jsonl").read_text().splitlines()}
    assert len(examples) == 6 and set(examples) <= dev and len(set(examples)) == 6
    assert world_examples("http://127.0.0.1:8001") == []


def test_cli_lists_chat_and_serve_without_loading_servers():
    code = "import sys; from dgpo_agent.cli import app; print([m for m in ('gradio', 'fastapi', 'uvicorn') if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    help_text = subprocess.run([sys.executable, "-m", "dgpo_agent.cli", "--help"], capture_output=True, text=True).stdout
    assert "chat" in help_text and "serve" in help_text


def test_chat_without_a_model_or_store_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dgpo_agent.cli", "chat"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no trained checkpoint under runs/: run `dgpo-agent train`, or pass --model PATH|NAME|URL|oracle"
    ]


# ----------------------------------------------------------------------------------------- the running demo


@pytest.fixture(scope="module")
def dev_questions(small_world):
    return [json.loads(line) for line in (small_world / "dev.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def demo_url(small_store, small_world):
    """The demo as `dgpo-agent chat --model oracle` builds it, on a free loopback port."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[demo]')")
    from dgpo_agent.agent import CompactSearchAgent
    from dgpo_agent.serving.chat import launch

    store = small_world / "chroma"
    agent = CompactSearchAgent("oracle", str(store))
    port = free_port()
    demo = launch(agent, world_examples(store), port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_gradio_client_gets_the_answer_and_the_steps(demo_url, dev_questions):
    from gradio_client import Client

    client = Client(demo_url, verbose=False)
    params = [p["parameter_name"] for p in client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/respond"]["parameters"]]
    assert params == ["message", "max_turns", "top_k", "temperature"]
    record = next(r for r in dev_questions if r["hops"] == 2)
    job = client.submit(record["question"], 4, 3, 0.0, api_name="/respond")
    final = job.result(timeout=120)
    assert final[-1] == {"role": "assistant", "content": record["golden_answers"][0]}
    thoughts = [m["metadata"]["title"] for m in final[:-1]]
    assert thoughts[0] == "💭 Thinking"
    assert sum(t.startswith("🔍 Searching: ") for t in thoughts) == 2  # a two-hop question, two searches
    assert sum(t == "📄 Retrieved 3 documents" for t in thoughts) == 2
    assert all(m["metadata"]["status"] == "done" for m in final[:-1])
    assert not RAW_TAG.search(all_text(final))
    streamed = job.outputs()  # every reply as the graph ran: the steps so far, then "working" (pending)
    assert len(streamed) >= 5 and streamed[-1] == final
    for partial in streamed[:-1]:
        assert partial[-1]["metadata"] == {"title": WORKING, "status": "pending"}
        assert partial[:-1] == final[: len(partial) - 1]


def test_settings_reach_the_agent_and_errors_are_shown(demo_url, dev_questions):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(demo_url, verbose=False)
    record = next(r for r in dev_questions if r["hops"] == 2)
    one_turn = client.predict(record["question"], 1, 2, 0.0, api_name="/respond")
    assert sum(m.get("metadata", {}).get("title", "").startswith("🔍") for m in one_turn) == 1
    assert any(m.get("metadata", {}).get("title") == "📄 Retrieved 2 documents" for m in one_turn)
    with pytest.raises(AppError, match="empty question"):
        client.predict("   ", api_name="/respond")


def test_20_concurrent_sessions_get_correct_answers(demo_url, dev_questions):
    from gradio_client import Client

    records = dev_questions[:20]
    results: dict[int, object] = {}
    latencies: list[float] = []
    barrier = threading.Barrier(len(records))

    def session(i: int) -> None:
        try:
            client = Client(demo_url, verbose=False)
            barrier.wait(timeout=60)
            start = time.perf_counter()
            results[i] = client.predict(records[i]["question"], api_name="/respond")[-1]["content"]
            latencies.append(time.perf_counter() - start)
        except Exception as err:  # any error fails the test below, with its message
            results[i] = err

    start = time.perf_counter()
    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(records))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wall = time.perf_counter() - start
    errors = {i: r for i, r in results.items() if isinstance(r, Exception)}
    assert not errors and len(results) == 20
    assert [results[i] for i in range(20)] == [r["golden_answers"][0] for r in records]
    latencies.sort()
    print(f"\n20 concurrent sessions: wall {wall:.2f} s, p50 {latencies[9]:.2f} s, max {latencies[-1]:.2f} s")


# ----------------------------------------------------------------------------------------- headless Chromium

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Debian's chromium is not at {CHROMIUM} (apt-get install chromium)")
def test_browser_shows_steps_as_thoughts(demo_url, dev_questions, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    record = next(r for r in dev_questions if r["hops"] == 2)
    shots = Path(os.environ.get("DGPO_SCREENSHOT_DIR", tmp_path))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1300})
        page.route(re.compile(r"^(?!http://127\.0\.0\.1[:/])"), lambda route: route.abort())  # offline: no web fonts
        page.goto(demo_url, wait_until="domcontentloaded")
        page.get_by_role("textbox").first.fill(record["question"])
        page.keyboard.press("Enter")
        replies = page.locator('[data-testid="bot"]').filter(has_not=page.locator(".thought-group"))
        sync_api.expect(replies.last).to_have_text(record["golden_answers"][0], timeout=90_000)
        sync_api.expect(page.get_by_text(WORKING)).to_have_count(0, timeout=30_000)  # the run has finished
        titles = page.locator('[data-testid="bot"] > .thought-group > .title')  # top level: one per step
        assert [t.split()[0] for t in titles.all_inner_texts()] == ["💭", "🔍", "💭", "🔍", "💭"]
        docs = page.get_by_text("📄 Retrieved 3 documents")
        if docs.count() == 0:  # collapsed: open the first search, its documents are a nested thought
            titles.nth(1).click()
        sync_api.expect(docs.first).to_be_visible(timeout=30_000)  # a loaded host redraws slowly
        page.wait_for_timeout(500)  # let the opening animation finish before the screenshot
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "chat.png"), full_page=True)
        text = page.locator("body").inner_text()
        browser.close()
    assert not RAW_TAG.search(text), "raw protocol tags in the page"
    assert (shots / "chat.png").stat().st_size > 10_000
