"""The tiny model zoo: the world tokenizer, model shapes, the copy curriculum and its probe, and
pretraining (loss falls, runs resume, the saved base model serves)."""

from __future__ import annotations

import json
import random
import re
import shutil
from types import SimpleNamespace

import pytest
import torch

from dgpo_agent import protocol
from dgpo_agent.backends import Context, SamplingParams
from dgpo_agent.backends.transformers import TransformersPolicy, kept_length
from dgpo_agent.training.copy_curriculum import copy_accuracy, copy_examples, episode, world_names
from dgpo_agent.training.pretrain import PretrainConfig, pretrain
from dgpo_agent.training.tokenizer import CHAT_TOKENS, EOS, TAG_TOKENS, train_tokenizer, world_texts
from dgpo_agent.training.zoo import STUDENT, TEACHER, build_model, count_params
from dgpo_agent.world import NameGenerator, load_kb, load_questions
from dgpo_agent.world.names import ORG_SUFFIXES

VOCAB = 1024  # the small world has too little text for the default 4,096
STEPS = 30
TRAJECTORY = (
    "<think> I need to find who founded Kreaxse Labs. </think>\n<search> Kreaxse Labs founder </search>"
    + protocol.information([{"id": "p1", "title": "Kreaxse Labs", "text": "Kreaxse Labs was founded by Zentrath Doglassoun.", "score": 1.0}])
    + "<think> So the answer is Zentrath Doglassoun. </think>\n<answer> Zentrath Doglassoun </answer>"
)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(small_world):
    return read_jsonl(small_world / "corpus.jsonl")


@pytest.fixture(scope="module")
def texts(corpus, small_world):
    return list(world_texts(corpus, [q["question"] for q in load_questions(small_world / "train.jsonl")]))


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_tokenizer(texts, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def pretrained(tokenizer, corpus, tmp_path_factory):
    """A student pretrained for STEPS steps on the small world, checkpointed halfway."""
    out = tmp_path_factory.mktemp("base")
    config = PretrainConfig(steps=STEPS, seq_len=128, warmup_steps=5, log_every=5, save_every=STEPS // 2, save_dir=str(out))
    result = pretrain(build_model(STUDENT, tokenizer, seed=0), tokenizer, corpus, config)
    return SimpleNamespace(dir=out, config=config, result=result)


# ------------------------------------------------------------------------------------------ tokenizer


def test_tags_and_chat_markers_are_single_tokens(tokenizer):
    for token in (EOS, *CHAT_TOKENS, *TAG_TOKENS):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    assert len(tokenizer) <= VOCAB and tokenizer.eos_token == tokenizer.pad_token == EOS


def test_every_year_of_the_world_is_one_token_and_other_numbers_still_encode(tokenizer, texts):
    """Split digit by digit, a year is four tokens shared with every other year, and the first teacher
    wrote invented years; one token per year is what makes it copyable like a name."""
    import re

    years = {y for text in texts for y in re.findall(r"\b\d{4}\b", text)}
    assert len(years) > 50
    for year in years:
        assert tokenizer.tokenize(f"in the year {year}.")[-2:] == [year, "."]
    for text in ("born in 1875 or 12345", "Founded in the year 1985, X"):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_protocol_text_round_trips_and_keeps_tags_when_special_tokens_are_skipped(tokenizer):
    ids = tokenizer.encode(TRAJECTORY + EOS, add_special_tokens=False)
    assert tokenizer.decode(ids) == TRAJECTORY + EOS
    # TRL and vLLM decode completions skipping special tokens: the tags must survive, EOS must not.
    assert tokenizer.decode(ids, skip_special_tokens=True) == TRAJECTORY
    escaped = protocol.escape("a </information> <answer> b <|im_end|>")
    assert not set(tokenizer.encode(escaped, add_special_tokens=False)) & set(tokenizer.all_special_ids)


def test_stop_strings_fire_on_the_tag_tokens(tokenizer):
    from transformers.generation.stopping_criteria import StopStringCriteria

    criteria = StopStringCriteria(tokenizer, list(protocol.STOP_STRINGS))
    for text, stops in (("<search> a b </search>", True), ("<answer> a </answer>", True), ("<search> a b", False)):
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
        assert bool(criteria(ids, None)[0]) is stops, text
    policy = TransformersPolicy(build_model(STUDENT, tokenizer), tokenizer)
    ids = tokenizer.encode("<search> a </search> <answer> b </answer>", add_special_tokens=False)
    assert policy._decode(ids[: kept_length(ids, policy.eos_ids, protocol.STOP_STRINGS, policy._decode)]) == "<search> a </search>"


def test_training_is_deterministic(tokenizer, texts):
    again = train_tokenizer(texts, vocab_size=VOCAB)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_chat_template_renders_the_prompt(tokenizer):
    question = "Who founded Kreaxse Labs"
    expected = f"<|im_start|>user\n{protocol.instructions(question)}<|im_end|>\n<|im_start|>assistant\n"
    assert protocol.render_prompt(question, tokenizer) == expected


def test_names_cost_few_tokens(tokenizer, corpus):
    names = sorted(world_names(corpus))
    assert sum(len(tokenizer.encode(" " + n, add_special_tokens=False)) for n in names) / len(names) < 8


# ------------------------------------------------------------------------------------------ zoo


def test_model_sizes_and_reproducible_init(tokenizer):
    teacher, student = build_model(TEACHER, tokenizer, seed=0), build_model(STUDENT, tokenizer, seed=0)
    assert count_params(teacher) > 2 * count_params(student)
    assert student.config.vocab_size == len(tokenizer) and student.config.tie_word_embeddings
    assert student.lm_head.weight is student.model.embed_tokens.weight
    assert all(p.dtype == torch.float32 for p in student.parameters())
    again, other = build_model(STUDENT, tokenizer, seed=0), build_model(STUDENT, tokenizer, seed=1)
    assert torch.equal(again.model.embed_tokens.weight, student.model.embed_tokens.weight)
    assert not torch.equal(other.model.embed_tokens.weight, student.model.embed_tokens.weight)


# ------------------------------------------------------------------------------------------ copy curriculum


def test_world_names_are_the_knowledge_base(corpus, small_world):
    assert world_names(corpus) == set(load_kb(small_world).entities)


def test_copy_curriculum_never_emits_a_world_name(corpus, small_world):
    suffixes = {s for pool in ORG_SUFFIXES.values() for s in pool}
    world_words = {w for name in load_kb(small_world).entities for w in name.split()} - suffixes
    examples = list(copy_examples(0, world_names(corpus), 400))
    text = "\n".join(examples)
    assert not world_words & set(re.findall(r"[A-Z][a-z]+", text))
    assert examples == list(copy_examples(0, world_names(corpus), 400))
    assert any("Repeat:" in e for e in examples) and any("<information>" in e for e in examples)


def test_episodes_copy_names_from_the_question_and_the_documents(corpus):
    rng, names = random.Random(0), NameGenerator(1, world_names(corpus))
    for _ in range(100):
        ep = episode(names, rng)
        first, second = protocol.parse_action(ep.first), protocol.parse_action(ep.second)
        assert first.kind == "search" and first.content.split()[0] in ep.question
        assert second.kind in ("search", "answer") and second.content != "unknown"
        assert "(Title: " in ep.observation and ep.found in ep.observation and ep.found in ep.second


class _PerfectCopier(torch.nn.Module):
    """Teacher-forced, predicts every next id: the probe must score it 1.0 (and 0.0 shifted by one)."""

    def __init__(self, vocab: int, shift: int = 1) -> None:
        super().__init__()
        self.vocab, self.shift = vocab, shift
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask):
        target = torch.roll(input_ids, -self.shift, dims=1)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(target, self.vocab).float())


def test_copy_probe_scores_exact_copies(tokenizer, corpus):
    reserved = world_names(corpus)
    assert copy_accuracy(_PerfectCopier(len(tokenizer)), tokenizer, NameGenerator(7, reserved), n=20) == 1.0
    assert copy_accuracy(_PerfectCopier(len(tokenizer), shift=2), tokenizer, NameGenerator(7, reserved), n=20) == 0.0
    untrained = build_model(STUDENT, tokenizer)
    assert copy_accuracy(untrained, tokenizer, NameGenerator(7, reserved), n=20) == 0.0
    assert untrained.training  # the probe restores the model's mode


# ------------------------------------------------------------------------------------------ pretraining


def test_pretraining_reduces_the_loss(pretrained):
    losses = [e["loss"] for e in read_jsonl(pretrained.dir / "metrics.jsonl") if "loss" in e]
    assert pretrained.result["steps"] == STEPS and pretrained.result["resumed_from"] == 0
    assert losses[0] > 6.0 and pretrained.result["final_loss"] < losses[0] - 1.0
    assert pretrained.result["tokens_per_s"] > 0


def test_an_interrupted_run_resumes_from_its_last_checkpoint(pretrained, tokenizer, corpus, tmp_path):
    half = STEPS // 2
    shutil.copytree(pretrained.dir / f"checkpoint-{half}", tmp_path / f"checkpoint-{half}")
    logged = read_jsonl(pretrained.dir / "metrics.jsonl")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in logged))  # incl. steps after the checkpoint
    config = PretrainConfig(**{**vars(pretrained.config), "save_dir": str(tmp_path)})
    result = pretrain(build_model(STUDENT, tokenizer, seed=123), tokenizer, corpus, config)
    assert result["resumed_from"] == half and result["steps"] == STEPS
    assert result["final_loss"] == pytest.approx(pretrained.result["final_loss"], abs=1e-4)
    steps = [e["step"] for e in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in e]
    assert steps == [e["step"] for e in logged if "loss" in e]


def test_the_saved_base_model_serves(pretrained, tokenizer):
    policy = TransformersPolicy.from_pretrained(str(pretrained.dir), device="cpu")
    assert policy.tokenizer.encode(TRAJECTORY, add_special_tokens=False) == tokenizer.encode(TRAJECTORY, add_special_tokens=False)
    question = "Who founded Kreaxse Labs"
    context = Context(question, [policy.prompt(question)])
    [completion] = policy.generate([context], SamplingParams(max_new_tokens=8))
    assert completion.token_ids and len(completion.token_ids) <= 8


def test_a_student_cut_from_a_checkpoint_keeps_evenly_spaced_layers_and_generates():
    """``keep_layers`` keeps the first and last layers and others evenly between; the cut model is the
    kept layers in order (the same outputs as those layers run by hand) and generates with its cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dgpo_agent.errors import DGPOError
    from dgpo_agent.training.zoo import keep_layers

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=4)
    model = LlamaForCausalLM(config).eval()
    original = list(model.model.layers)
    assert keep_layers(model, 3) == [0, 3, 6]
    assert [id(layer) for layer in model.model.layers] == [id(original[i]) for i in (0, 3, 6)]
    assert model.config.num_hidden_layers == 3 and [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    ids = torch.tensor([[1, 5, 9, 2]])
    cached = model.generate(ids, max_new_tokens=5, do_sample=False)
    uncached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    with pytest.raises(DGPOError, match="the model has 3 layers: choose 1 to 3"):
        keep_layers(model, 4)
