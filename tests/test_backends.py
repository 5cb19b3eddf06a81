"""Generation backends: batching, stop strings, token/log-prob bookkeeping, the server client, dispatch."""

from __future__ import annotations

import copy
import importlib.util
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from dgpo_agent import protocol
from dgpo_agent.backends import Context, Policy, SamplingParams, context_ids, load_policy
from dgpo_agent.backends.base import RolloutEngine
from dgpo_agent.backends.openai_server import OpenAICompletionsPolicy
from dgpo_agent.backends.transformers import TransformersPolicy, continued_rows, kept_length
from dgpo_agent.backends.vllm_engine import COLOCATED_GPU_SHARE, VLLMPolicy, sampling_kwargs
from dgpo_agent.errors import DGPOError
from tests.models import tiny_qwen2, tiny_tokenizer

GREEDY = SamplingParams(max_new_tokens=24, stop=())
QUESTIONS = [
    "Who wrote Moby Dick",
    "capital of France",
    "x",
    "What is the largest city in the world by population today",
    "a b c",
    "Who is the author of the novel about the white whale",
]


@pytest.fixture(scope="module")
def policy() -> TransformersPolicy:
    tok = tiny_tokenizer()
    return TransformersPolicy(tiny_qwen2(tok), tok)


@pytest.fixture(scope="module")
def multi_turn_contexts(policy: TransformersPolicy) -> list[Context]:
    """Contexts of different lengths: bare prompts, and prompts followed by a model turn and an observation."""
    contexts = [Context(q, [policy.prompt(q)]) for q in QUESTIONS]
    first = policy.generate(contexts[::2], SamplingParams(max_new_tokens=9, stop=()))
    for ctx, done in zip(contexts[::2], first):
        ctx.segments.append({"role": "model", "text": done.text, "ids": done.token_ids})
        ctx.segments.append({"role": "env", "text": protocol.information([]) + ctx.question, "ids": None})
    return contexts


def forward_logprobs(
    policy: TransformersPolicy, context: list[int], ids: list[int], temperature: float = 1.0
) -> list[float]:
    """Log-probs of ``ids`` after ``context`` from one plain forward pass."""
    with torch.no_grad():
        logits = policy.model(torch.tensor([context + ids])).logits[0, len(context) - 1 : -1]
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    return logprobs.gather(1, torch.tensor(ids)[:, None]).squeeze(1).tolist()


# ----------------------------------------------------------------------------------------- transformers


def test_batched_greedy_equals_one_at_a_time(policy, multi_turn_contexts):
    contexts = multi_turn_contexts
    assert len({len(context_ids(c, policy.encode)) for c in contexts}) == len(contexts)
    batched = policy.generate(contexts, GREEDY)
    alone = [policy.generate([c], GREEDY)[0] for c in contexts]
    assert [b.token_ids for b in batched] == [a.token_ids for a in alone]
    assert [b.text for b in batched] == [a.text for a in alone]
    for b, a in zip(batched, alone):
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


def continue_with_observation(contexts: list[Context], completions: list, text: str) -> list[Context]:
    """The next turn's contexts: each context plus its completion and an environment observation."""
    return [
        Context(c.question, [*c.segments, {"role": "model", "text": r.text, "ids": r.token_ids}, {"role": "env", "text": text + c.question, "ids": None}])
        for c, r in zip(contexts, completions)
    ]


def prefill_widths(model) -> tuple[list[int], object]:
    """Record the sequence length of every forward pass that encodes more than one token (a prefill)."""
    widths: list[int] = []
    handle = model.register_forward_pre_hook(lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    return widths, handle


def test_a_continued_batch_encodes_only_its_new_tokens_and_generates_the_same(policy):
    """Prefix caching: the next turn of some of the last call's contexts (finished ones dropped) reuses
    their cache, prefilling only the completion and the observation, with the same greedy result as a
    policy that encodes everything."""
    cached, plain = TransformersPolicy(policy.model, policy.tokenizer), TransformersPolicy(policy.model, policy.tokenizer, prefix_caching=False)
    contexts = [Context(q, [policy.prompt(q)]) for q in QUESTIONS]
    first = cached.generate(contexts, GREEDY)
    assert [r.token_ids for r in first] == [r.token_ids for r in plain.generate(contexts, GREEDY)]
    kept = [0, 2, 3, 5]  # trajectories 1 and 4 finished
    following = continue_with_observation([contexts[i] for i in kept], [first[i] for i in kept], protocol.information([]))
    widths, handle = prefill_widths(policy.model)
    try:
        second = cached.generate(following, GREEDY)
    finally:
        handle.remove()
    full = max(len(context_ids(c, policy.encode)) for c in following)
    new = max(len(context_ids(c, policy.encode)) - len(context_ids(contexts[i], policy.encode)) for c, i in zip(following, kept))
    assert widths[0] == new < full / 2
    expected = plain.generate(following, GREEDY)
    assert [r.token_ids for r in second] == [r.token_ids for r in expected]
    for got, want in zip(second, expected):
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)


def test_a_cache_is_never_reused_after_the_weights_change_or_for_other_contexts(policy):
    model = copy.deepcopy(policy.model)
    cached = TransformersPolicy(model, policy.tokenizer)
    contexts = [Context(q, [policy.prompt(q)]) for q in QUESTIONS[:3]]
    first = cached.generate(contexts, GREEDY)
    following = continue_with_observation(contexts, first, protocol.information([]))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(input_ids=torch.tensor([contexts[0].segments[0]["ids"]])).logits.sum().backward()
    optimizer.step()
    widths, handle = prefill_widths(model)
    try:
        after_update = cached.generate(following, GREEDY)
        cached.generate([Context("other", [policy.prompt("a question never asked")])], GREEDY)
    finally:
        handle.remove()
    assert widths[0] == max(len(context_ids(c, policy.encode)) for c in following)  # everything re-encoded
    assert [r.token_ids for r in after_update] == [r.token_ids for r in TransformersPolicy(model, policy.tokenizer).generate(following, GREEDY)]


@pytest.mark.parametrize(
    "previous, rows, picks",
    [
        ([[1, 2], [3, 4], [5]], [[1, 2, 9], [5, 6, 7]], [0, 2]),  # finished rows dropped, order kept
        ([[1, 2]], [[1, 2]], None),  # nothing new to encode
        ([[1, 2], [3]], [[3, 1], [1, 2, 3]], None),  # out of order
        ([[1, 2]], [[1, 3, 4]], None),  # diverged
        ([], [[1]], None),
    ],
)
def test_continued_rows(previous, rows, picks):
    assert continued_rows(previous, rows) == picks


def test_growing_cache_generates_exactly_what_transformers_dynamic_cache_does(policy):
    from transformers import DynamicCache

    from dgpo_agent.backends.kv_cache import GrowingCache

    ids = torch.tensor([policy.prompt(q)["ids"][-12:] for q in QUESTIONS])
    runs = [
        policy.model.generate(input_ids=ids, cache=cache, max_new_tokens=20, do_sample=False, return_dict_in_generate=True, output_logits=True, pad_token_id=0)
        for cache in (GrowingCache(), DynamicCache())
    ]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for a, b in zip(runs[0].logits, runs[1].logits):
        assert torch.allclose(a, b, atol=1e-5)


def test_finished_rows_leave_the_batch_and_the_rest_decode_as_transformers_generate_does(policy):
    """Rows that hit a stop string are dropped from the batch (and its cache) while the others go on;
    every row's tokens and log-probs are those of ``model.generate`` run on that row alone."""
    contexts = [Context(q, [policy.prompt(q)]) for q in QUESTIONS]
    free = policy.generate(contexts, GREEDY)
    stops = tuple(stop_candidate(policy, r.token_ids, 0) for r in free[:3])
    params = SamplingParams(max_new_tokens=24, stop=stops)
    batch_sizes: list[int] = []
    handle = policy.model.register_forward_pre_hook(lambda _, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        results = TransformersPolicy(policy.model, policy.tokenizer).generate(contexts, params)
    finally:
        handle.remove()
    assert batch_sizes[0] == len(contexts) > batch_sizes[-1]  # the batch shrank as rows finished
    for ctx, result in zip(contexts, results):
        ids = torch.tensor([ctx.segments[0]["ids"]])
        out = policy.model.generate(
            input_ids=ids, max_new_tokens=24, do_sample=False, stop_strings=list(stops), tokenizer=policy.tokenizer,
            return_dict_in_generate=True, output_logits=True, pad_token_id=0,
        )
        expected = out.sequences[0, ids.shape[1] :].tolist()
        assert result.token_ids == expected
        logprobs = [torch.log_softmax(step[0], -1)[t].item() for step, t in zip(out.logits, expected)]
        assert result.logprobs == pytest.approx(logprobs, abs=1e-4)


def test_sampling_draws_from_the_warped_distribution_and_never_a_cut_token():
    from dgpo_agent.backends.decode import _draw

    probs = torch.softmax(torch.randn(50, generator=torch.Generator().manual_seed(0)), -1)
    probs[[3, 17, 49]] = 0.0  # cut by top-p
    probs /= probs.sum()
    torch.manual_seed(1)
    draws = _draw(probs.expand(200_000, -1))
    frequencies = torch.bincount(draws, minlength=50).double() / draws.numel()
    assert frequencies[[3, 17, 49]].sum() == 0
    assert torch.allclose(frequencies, probs.double(), atol=3e-3)


def test_prompt_uses_chat_template(policy):
    segment = policy.prompt("Who wrote Moby Dick")
    assert segment["role"] == "prompt"
    assert segment["text"].startswith("<|im_start|>user\n" + protocol.instructions("Who wrote Moby Dick"))
    assert segment["text"].endswith("<|im_start|>assistant\n")
    assert segment["ids"] == policy.tokenizer.encode(segment["text"], add_special_tokens=False)
    assert segment["ids"][0] == policy.tokenizer.convert_tokens_to_ids("<|im_start|>")


def stop_candidate(policy: TransformersPolicy, ids: list[int], overhang: int) -> str:
    """A string from the middle of a generation that ends ``overhang`` characters inside a token."""
    for j in range(3, len(ids) - 2):
        pair = policy._decode(ids[j : j + 2])
        stop = pair[: len(pair) - overhang]
        fits = len(policy._decode(ids[j + 1 : j + 2])) > overhang and stop.isascii() and stop.isprintable()
        if fits and stop.strip() and cut_at(policy, ids, stop) == ids[: j + 2]:
            return stop
    raise AssertionError("no usable stop string in the generation")


def cut_at(policy: TransformersPolicy, ids: list[int], stop: str) -> list[int]:
    """The shortest prefix of ``ids`` whose text contains ``stop`` (all of them if none does)."""
    return next((ids[:k] for k in range(1, len(ids) + 1) if stop in policy._decode(ids[:k])), ids)


@pytest.mark.parametrize("overhang", [0, 1], ids=["token-aligned", "overhanging-token"])
def test_stop_string_ends_the_completion(policy, overhang):
    contexts = [Context(q, [policy.prompt(q)]) for q in QUESTIONS[:3]]
    free = policy.generate(contexts, GREEDY)
    stop = stop_candidate(policy, free[0].token_ids, overhang)
    stopped = policy.generate(contexts, SamplingParams(max_new_tokens=24, stop=(stop,)))
    assert len(stopped[0].token_ids) < len(free[0].token_ids)
    for result, unconstrained in zip(stopped, free):
        expected = cut_at(policy, unconstrained.token_ids, stop)
        assert result.token_ids == expected  # finished rows' padding is not returned as an EOS
        assert result.text == policy._decode(expected)  # an overhanging token's tail stays in the text
        assert result.logprobs == pytest.approx(unconstrained.logprobs[: len(expected)], abs=1e-4)
    first = stopped[0].text
    assert first.count(stop) == 1 and first[: len(first) - overhang].endswith(stop)


def test_eos_is_kept_once_and_left_out_of_the_text(policy):
    tok = policy.tokenizer
    contexts = [Context(q, [policy.prompt(q)]) for q in QUESTIONS[:4]]
    free = policy.generate(contexts[:1], GREEDY)[0]
    model = copy.deepcopy(policy.model)
    with torch.no_grad():  # make EOS win wherever the 5th generated token would have
        model.lm_head.weight[tok.eos_token_id] = 2 * model.lm_head.weight[free.token_ids[4]]
    eos_policy = TransformersPolicy(model, tok)
    results = eos_policy.generate(contexts, GREEDY)
    ended = [r for r in results if r.token_ids[-1] == tok.eos_token_id]
    assert results[0] in ended and len(results[0].token_ids) <= 5
    for r in ended:
        assert r.token_ids.count(tok.eos_token_id) == 1
        assert r.text == tok.decode(r.token_ids[:-1]) and tok.eos_token not in r.text
        assert len(r.logprobs) == len(r.token_ids)


USER = protocol.ChatFormat(observations="user")


def test_user_observations_follow_the_chat_template_and_a_turn_the_model_closed_stays_closed(policy):
    """With ``observations="user"`` the documents go into a new user turn: the environment closes the
    model's turn unless the model ended it with its end-of-turn token, which is then not repeated."""
    tok = policy.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    text = protocol.information([])
    open_turn = policy.observe(text, {"role": "model", "text": "<search> x </search>", "ids": tok.encode("<search> x </search>")}, USER)
    closed_turn = policy.observe(text, {"role": "model", "text": "prose", "ids": tok.encode("prose") + [end]}, USER)
    assert open_turn["text"].startswith("<|im_end|>\n<|im_start|>user\n<information>")
    assert open_turn["text"].endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert closed_turn["text"] == open_turn["text"].removeprefix("<|im_end|>")
    assert closed_turn["ids"] == tok.encode(closed_turn["text"], add_special_tokens=False) and end not in closed_turn["ids"][:1]
    assert policy.observe(text, {"role": "model", "text": "", "ids": [end]}, protocol.ChatFormat())["text"] == text  # as Search-R1


def test_token_ids_and_greedy_logprobs_round_trip(policy, multi_turn_contexts):
    contexts = multi_turn_contexts
    for ctx, result in zip(contexts, policy.generate(contexts, GREEDY)):
        assert policy.tokenizer.decode(result.token_ids, skip_special_tokens=False) == result.text
        assert len(result.logprobs) == len(result.token_ids) > 0
        assert all(lp <= 0 for lp in result.logprobs)
        expected = forward_logprobs(policy, context_ids(ctx, policy.encode), result.token_ids)
        assert result.logprobs == pytest.approx(expected, abs=1e-4)


def test_model_segments_are_fed_as_sampled_ids(policy):
    policy = TransformersPolicy(policy.model, policy.tokenizer)  # no cache from earlier calls: the whole context is fed
    text = "The capital of France is Paris."
    merged = policy.encode(text)
    by_byte = [i for ch in text for i in policy.encode(ch)]
    assert merged != by_byte and policy._decode(by_byte) == text
    prompt = policy.prompt("capital of France")
    context = Context("capital of France", [prompt, {"role": "model", "text": text, "ids": by_byte}])

    seen = []
    handle = policy.model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    try:
        policy.generate([context], GREEDY)
    finally:
        handle.remove()
    assert seen[0] == prompt["ids"] + by_byte


def test_seeded_sampling_is_repeatable_and_leaves_global_rng_alone(policy):
    contexts = [Context(q, [policy.prompt(q)]) for q in QUESTIONS[:3]]

    def sample(seed):
        return policy.generate(contexts, SamplingParams(temperature=1.5, max_new_tokens=16, stop=(), seed=seed))

    rng_before = torch.get_rng_state()
    first, again = sample(1), sample(1)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    others = [[r.token_ids for r in sample(seed)] for seed in (2, 3)]
    assert any(o != [r.token_ids for r in first] for o in others)
    # Sampling log-probs are under the tempered distribution.
    expected = forward_logprobs(policy, contexts[0].segments[0]["ids"], first[0].token_ids, temperature=1.5)
    assert first[0].logprobs == pytest.approx(expected, abs=1e-4)


def test_a_context_longer_than_the_window_overflows_alone(policy):
    """A context the window cannot hold with ``max_new_tokens`` more is never truncated: it gets an
    empty overflow completion, and the rest of the batch is generated as usual."""
    long = Context("q", [{"role": "prompt", "text": "", "ids": [7] * 2000}])
    short = Context("q", [policy.prompt("q")])
    params = SamplingParams(max_new_tokens=100, seed=0)
    out = policy.generate([short, long], params)
    assert [c.overflow for c in out] == [False, True]
    assert out[1].token_ids == [] and out[1].text == ""
    assert out[0].token_ids == policy.generate([short], params)[0].token_ids


@pytest.mark.parametrize(
    "ids, keep",
    [
        ([1, 2, 3], 3),  # ran to max_new_tokens
        ([1, 2, 0, 0, 0], 3),  # EOS, then padding
        ([1, 5, 2, 0, 0], 2),  # the stop string "5" (padding is EOS too)
        ([1, 2, 0], 3),  # EOS as the last token
        ([0, 0], 1),
    ],
)
def test_kept_length(ids, keep):
    assert kept_length(ids, {0}, ("5",), lambda xs: "".join(map(str, xs))) == keep


# ----------------------------------------------------------------------------------------- OpenAI server


class FakeVLLMServer(ThreadingHTTPServer):
    """Answers like ``vllm serve``: choices shuffled, and the stop string stripped on every third prompt."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeVLLMHandler)
        self.requests: list[dict] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


def fake_choice(i: int, prompt: str) -> dict:
    echo = f"[{prompt[-6:]}] "
    kind = i % 3
    if kind == 0:  # stop string matched and stripped: plain OpenAI behaviour
        return {"text": echo + "<search> q ", "finish_reason": "stop", "stop_reason": "</search>"}
    if kind == 1:  # include_stop_str_in_output honoured
        return {"text": echo + "<answer> a </answer>", "finish_reason": "stop", "stop_reason": "</answer>"}
    return {"text": echo + "and so on", "finish_reason": "length", "stop_reason": None}


class FakeVLLMHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._reply(200, {"object": "list", "data": [{"id": "tiny-served", "object": "model", "owned_by": "me"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        if self.path != "/v1/completions" or body["model"] != "tiny-served":
            return self._reply(404, {"error": {"message": f"model {body['model']} does not exist", "code": 404}})
        choices = [dict(fake_choice(i, p), index=i, logprobs=None) for i, p in enumerate(body["prompt"])]
        choices = choices[1::2] + choices[::2]
        reply = {"id": "c", "object": "text_completion", "created": 0, "model": body["model"], "choices": choices}
        self._reply(200, reply)

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    srv = FakeVLLMServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_openai_client_orders_choices_and_restores_stop_strings(server):
    remote = OpenAICompletionsPolicy(server.url)
    assert remote.model == "tiny-served"
    prompt = remote.prompt("Who wrote Moby Dick")
    assert prompt == {"role": "prompt", "text": protocol.instructions("Who wrote Moby Dick"), "ids": None}
    assert remote.encode("anything") is None

    prompts = [{"role": "prompt", "text": f"question number {i:02d}", "ids": None} for i in range(5)]
    contexts = [Context(f"q{i}", [p]) for i, p in enumerate(prompts)]
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=33, seed=5)
    results = remote.generate(contexts, params)

    assert [r.text.split("]")[0] for r in results] == [f"[ber {i:02d}" for i in range(5)]
    assert [r.text.split("] ")[1] for r in results] == [
        "<search> q </search>", "<answer> a </answer>", "and so on", "<search> q </search>", "<answer> a </answer>"
    ]
    assert all(r.token_ids is None and r.logprobs is None for r in results)
    (request,) = server.requests
    assert request["prompt"] == [c.text for c in contexts]
    assert request["stop"] == ["</search>", "</answer>"]
    assert (request["max_tokens"], request["temperature"], request["top_p"], request["seed"]) == (33, 0.7, 0.9, 5)
    assert request["include_stop_str_in_output"] is True and request["skip_special_tokens"] is False
    assert "logprobs" not in request


def test_openai_client_greedy_request_and_local_chat_template(server, tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path)
    remote = OpenAICompletionsPolicy(server.url + "/v1/", model="tiny-served", tokenizer=str(tmp_path))
    assert remote.prompt("x")["text"] == protocol.render_prompt("x", tiny_tokenizer())
    remote.generate([Context("x", [remote.prompt("x")])], SamplingParams())
    (request,) = server.requests
    assert request["temperature"] == 0.0 and "seed" not in request


def test_openai_client_errors_are_one_line(server):
    with pytest.raises(DGPOError, match=r"HTTP 404.*does not exist"):
        OpenAICompletionsPolicy(server.url, model="other").generate([Context("x", [])], SamplingParams())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DGPOError, match=rf"cannot reach a model server at http://127.0.0.1:{port}/v1.*vllm serve"):
        OpenAICompletionsPolicy(f"http://127.0.0.1:{port}")


# ----------------------------------------------------------------------------------------- vLLM, dispatch


def test_sampling_kwargs_map_to_vllm_fields():
    greedy = sampling_kwargs(SamplingParams(max_new_tokens=7, top_p=0.5))
    assert greedy == {
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 7,
        "stop": ["</search>", "</answer>"],
        "include_stop_str_in_output": True,
        "seed": None,
        "logprobs": 0,
        "skip_special_tokens": False,
    }
    sampled = sampling_kwargs(SamplingParams(temperature=0.8, top_p=0.95, stop=("</x>",), seed=3))
    assert (sampled["temperature"], sampled["top_p"], sampled["stop"], sampled["seed"]) == (0.8, 0.95, ["</x>"], 3)


@pytest.fixture
def no_vllm(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))


def test_missing_vllm_is_a_clean_error(no_vllm):
    message = r"vLLM is not installed: pip install 'dgpo-agent\[vllm\]' \(needs a CUDA GPU\)"
    with pytest.raises(DGPOError, match=message):
        VLLMPolicy("some/model")
    with pytest.raises(DGPOError, match="vLLM is not installed"):
        load_policy("some/model", backend="vllm")


@pytest.fixture
def vllm_checkpoint(policy, tmp_path):
    policy.model.save_pretrained(tmp_path)
    policy.tokenizer.save_pretrained(tmp_path)
    return str(tmp_path)


def test_vllm_rows_of_one_call_draw_their_own_samples(fake_vllm, vllm_checkpoint, policy):
    """vLLM seeds each request on its own: one seed for a whole call would give the rollouts of one
    question the same sample. Each row gets its own seed, derived from the call's, so the call stays
    repeatable; greedy rows stay identical."""
    engine = VLLMPolicy(vllm_checkpoint)
    question = [Context("q", [engine.prompt("Who wrote Moby Dick")])] * 3
    sampled = SamplingParams(temperature=1.0, max_new_tokens=16, stop=(), seed=7)
    first = [c.token_ids for c in engine.generate(question, sampled)]
    assert len({tuple(ids) for ids in first}) == 3
    assert [c.token_ids for c in engine.generate(question, sampled)] == first
    seeds = [r.seed for r in fake_vllm.LLM.built[0].requests[0]]
    assert len(set(seeds)) == 3 and 7 not in seeds
    assert len({tuple(c.token_ids) for c in engine.generate(question, GREEDY)}) == 1
    assert engine.generate(question, GREEDY)[0].token_ids == policy.generate(question, GREEDY)[0].token_ids


def test_vllm_engine_takes_trained_weights_in_place(fake_vllm, vllm_checkpoint):
    """As a RolloutEngine it starts at version 0 (the trainer syncs before the first rollout); a sync
    copies the trained model's parameters into vLLM's model under their Hugging Face names and drops
    the prefix cache built from the old weights."""
    engine = VLLMPolicy(vllm_checkpoint)
    assert isinstance(engine, RolloutEngine) and engine.weights_version == 0
    trained = tiny_qwen2(tiny_tokenizer(), seed=3)
    engine.load_weights(trained, 4)
    llm = fake_vllm.LLM.built[0]
    held = dict(llm.model.model.named_parameters())
    assert all(torch.equal(held[name], p) for name, p in trained.named_parameters())
    assert (engine.weights_version, llm.prefix_resets) == (4, 1)
    context = [Context("q", [engine.prompt("capital of France")])]
    assert engine.generate(context, GREEDY)[0].token_ids == TransformersPolicy(trained, engine.tokenizer).generate(context, GREEDY)[0].token_ids


def test_a_colocated_vllm_engine_runs_in_the_trainers_process(fake_vllm, vllm_checkpoint, monkeypatch):
    """``external_launcher`` keeps vLLM's executor in this process, placed by the launcher's variables,
    which a plain ``python`` run gets here; the trainer's tokenizer encodes the environment's text."""
    for name in fake_vllm.RENDEZVOUS:
        monkeypatch.delenv(name, raising=False)
    own = tiny_tokenizer()
    engine = VLLMPolicy.colocated(vllm_checkpoint, rank=0, local_rank=0, world_size=1, gpu_memory_utilization=0.25, tokenizer=own)
    llm = fake_vllm.LLM.built[0]
    assert llm.engine_kwargs == {
        "distributed_executor_backend": "external_launcher",
        "gpu_memory_utilization": 0.25,
        "logprobs_mode": "processed_logprobs",
    }
    assert llm.rendezvous["RANK"] == "0" and llm.rendezvous["WORLD_SIZE"] == "1" and int(llm.rendezvous["MASTER_PORT"]) > 0
    assert engine.tokenizer is own and engine.window() == llm.llm_engine.model_config.max_model_len
    monkeypatch.setenv("RANK", "3")  # a launcher's own variables are kept
    VLLMPolicy.colocated(vllm_checkpoint, rank=0, local_rank=0, world_size=1)
    assert fake_vllm.LLM.built[1].rendezvous["RANK"] == "3"
    assert fake_vllm.LLM.built[1].engine_kwargs["gpu_memory_utilization"] == COLOCATED_GPU_SHARE


def test_load_policy_dispatch(policy, server, tmp_path):
    assert load_policy(policy) is policy
    assert isinstance(load_policy(server.url), OpenAICompletionsPolicy)
    policy.model.save_pretrained(tmp_path)
    policy.tokenizer.save_pretrained(tmp_path)
    local = load_policy(str(tmp_path))
    assert isinstance(local, TransformersPolicy) and isinstance(local, Policy)
    assert local.device.type == "cpu" and local.model.dtype == torch.float32
    context = [Context("q", [local.prompt("Who wrote Moby Dick")])]
    assert local.generate(context, GREEDY)[0].token_ids == policy.generate(context, GREEDY)[0].token_ids
    with pytest.raises(DGPOError, match="unknown backend 'jax'"):
        load_policy(str(tmp_path), backend="jax")
    with pytest.raises(DGPOError, match="cannot use int as a policy"):
        load_policy(3)


@pytest.mark.parametrize("name", ["/nonexistent/checkpoint", "no-such-org/no-such-model"])
def test_missing_model_is_a_clean_error(name):
    message = f"model '{name}' not found: pass a checkpoint directory, a Hugging Face model name, or a server URL"
    with pytest.raises(DGPOError) as err:
        load_policy(name)
    assert str(err.value) == message


def test_importing_backends_stays_cheap():
    code = (
        "import sys, dgpo_agent.backends, dgpo_agent.backends.openai_server, dgpo_agent.backends.vllm_engine, "
        "dgpo_agent.backends.transformers; "
        "print(sorted(m for m in ('torch', 'transformers', 'openai', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
