"""The evidence demonstrator: scripted demonstrations on any corpus, grounded in what the search returned."""

from dgpo_agent.protocol import parse_action
from dgpo_agent.rollout import AgentConfig, run_batch
from dgpo_agent.scripted import EvidencePolicy
from tests.fakes import KeywordRetriever


RECORDS = [
    {"id": "a", "question": "Which city is the capital of Zembla?", "golden_answers": ["Onhava"], "article": "Zembla"},
    {"id": "b", "question": "When did the beacon first shine?", "golden_answers": ["1901"], "article": "Lighthouse"},
    {"id": "c", "question": "Who painted the ceiling?", "golden_answers": ["Nobody Known"], "article": "Ceiling"},
]
SHELF = KeywordRetriever([
    {"id": "z", "title": "Zembla", "text": "The capital is Onhava."},
    {"id": "c", "title": "Ceiling", "text": "Plain plaster."},
    {"id": "l", "title": "Lighthouse", "text": "The tower was lit in 1901."},
])


def _actions(state):
    return [(s["kind"], s.get("query") or s.get("answer")) for s in state["steps"] if s["kind"] != "think"]


def test_it_answers_only_what_a_retrieved_document_states():
    states = run_batch([r["question"] for r in RECORDS], EvidencePolicy(RECORDS), SHELF, AgentConfig(max_turns=4, top_k=1))
    # Found by searching the question.
    assert _actions(states[0]) == [("search", "Which city is the capital of Zembla?"), ("answer", "Onhava")]
    # The question's words miss the passage; the article's name finds it.
    assert _actions(states[1]) == [("search", "When did the beacon first shine?"), ("search", "Lighthouse"), ("answer", "1901")]
    # No document states the answer: it gives up rather than answer from what it was told.
    assert _actions(states[2])[-1] == ("answer", "unknown")
    final = parse_action(states[0]["segments"][-1]["text"])
    assert final.kind == "answer" and "Zembla" in states[0]["segments"][-1]["text"]  # its thought cites the document
