"""Cold-start training: completion masks from segment roles, the forward-KL/CE loss, and the trainers."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from dgpo_agent import protocol
from dgpo_agent.errors import DGPOError
from dgpo_agent.rollout import TokenTrajectory
from dgpo_agent.training.data import CompletionCollator, encode_segments, from_token_trajectory, load_examples, stop_id
from dgpo_agent.training.distill import (
    DistillConfig,
    DistillTrainer,
    TopK,
    at_temperature,
    length_chunks,
    loss_terms,
    target_loss_terms,
    top_k_kl,
    train_kd,
    train_sft,
)
from tests.models import tiny_qwen2, tiny_tokenizer

QUESTION = "Who wrote the novel Moby Dick"
DOCS = [{"id": "1", "title": "Moby-Dick", "text": "Moby-Dick is an 1851 novel by Herman Melville.", "score": 1.0}]
MODEL_TEXTS = [
    "<think> I need the author. </think>\n<search> Moby Dick author </search>",
    "I will look it up.",
    "<think> The author is Herman Melville. </think>\n<answer> Herman Melville </answer>",
]


def segments(question: str = QUESTION, model_texts: list[str] = MODEL_TEXTS) -> list[dict]:
    """A text-only trajectory as the oracle stage writes it: search, retrieved docs, an invalid turn, answer."""
    search, invalid, answer = model_texts
    return [
        {"role": "prompt", "text": protocol.render_prompt(question)},
        {"role": "model", "text": search},
        {"role": "env", "text": protocol.information(DOCS)},
        {"role": "model", "text": invalid},
        {"role": "env", "text": protocol.CORRECTIVE_OBSERVATION},
        {"role": "model", "text": answer},
    ]


def masked_spans(example: dict) -> list[list[int]]:
    """The runs of consecutive ids whose completion mask is 1."""
    spans, current = [], []
    for token, keep in zip(example["input_ids"], example["completion_mask"]):
        if keep:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


def config(tmp_path, **kwargs) -> DistillConfig:
    defaults = {
        "output_dir": str(tmp_path),
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": 0,
        "per_device_train_batch_size": 4,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
    }
    return DistillConfig(**{**defaults, **kwargs})


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------- data


def test_encode_segments_masks_exactly_the_model_segments(tok) -> None:
    example = encode_segments(segments(), tok, question=QUESTION)
    assert len(example["input_ids"]) == len(example["completion_mask"])
    decoded = [tok.decode(span, skip_special_tokens=False) for span in masked_spans(example)]
    assert decoded == [MODEL_TEXTS[0], MODEL_TEXTS[1], MODEL_TEXTS[2] + "<|im_end|>"]

    info = tok.convert_tokens_to_ids("<information>")
    assert info in example["input_ids"]
    assert info not in [t for t, m in zip(example["input_ids"], example["completion_mask"]) if m]
    # The prompt is re-rendered in the tokenizer's chat template and never a target.
    prompt = protocol.render_prompt(QUESTION, tok)
    n = len(tok.encode(prompt, add_special_tokens=False))
    assert tok.decode(example["input_ids"][:n], skip_special_tokens=False) == prompt
    assert example["completion_mask"][: n + 1] == [0] * n + [1]


def test_encode_segments_without_question_keeps_prompt_text_and_adds_no_stop_without_answer(tok) -> None:
    segs = segments()[:3]  # prompt, search, documents: the run never answered
    example = encode_segments(segs, tok)
    assert tok.decode(example["input_ids"], skip_special_tokens=False) == "".join(s["text"] for s in segs)
    assert stop_id(tok) not in example["input_ids"]
    with pytest.raises(DGPOError, match="prompt segment"):
        encode_segments(segs[1:], tok)


def test_from_token_trajectory_keeps_ids_and_masks_environment() -> None:
    traj = TokenTrajectory(prompt_ids=[5, 6], response_ids=[7, 8, 9, 10], env_mask=[0, 1, 1, 0], logprobs=None)
    assert from_token_trajectory(traj) == {"input_ids": [5, 6, 7, 8, 9, 10], "completion_mask": [0, 0, 1, 0, 0, 1]}


def test_collator_right_pads_and_labels_only_completion_tokens() -> None:
    batch = CompletionCollator(pad_id=0)(
        [
            {"input_ids": [11, 12, 13, 14], "completion_mask": [0, 1, 0, 1]},
            {"input_ids": [21, 22], "completion_mask": [0, 1]},
        ]
    )
    assert batch["input_ids"].tolist() == [[11, 12, 13, 14], [21, 22, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 12, -100, 14], [-100, 22, -100, -100]]


def test_load_examples_reads_text_and_token_rows_and_filters_correct(tok, tmp_path) -> None:
    rows = [
        {"question": QUESTION, "segments": segments(), "scores": {"em": 1.0}},
        {"question": "capital of France", "segments": segments("capital of France"), "scores": {"em": 0.0}},
        {"prompt_ids": [1, 2], "response_ids": [3, 4, 5], "env_mask": [0, 1, 0], "scores": {"em": 1.0}},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    everything = load_examples(path, tok)
    correct = load_examples(path, tok, correct_only=True)
    assert len(everything) == 3 and len(correct) == 2
    assert correct[0] == encode_segments(segments(), tok, question=QUESTION)
    assert correct[1] == {"input_ids": [1, 2, 3, 4, 5], "completion_mask": [0, 0, 1, 0, 1]}

    path.write_text(json.dumps({"question": QUESTION, "segments": segments()}) + "\n")
    with pytest.raises(DGPOError, match="no scores.em"):
        load_examples(path, tok, correct_only=True)


# ----------------------------------------------------------------------------------------- loss


def _log_softmax(row: list[float]) -> list[float]:
    norm = math.log(sum(math.exp(x) for x in row))
    return [x - norm for x in row]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_kl_and_ce_match_hand_computation(temperature: float) -> None:
    student = [[0.0, 1.0, 2.0], [1.0, -1.0, 0.5], [9.0, 9.0, 9.0]]
    teacher = [[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [-9.0, 0.0, 9.0]]
    labels = torch.tensor([[-100, 0, 2]])  # position t predicts label t+1: two target positions
    terms = loss_terms(torch.tensor([student]), labels, torch.tensor([teacher]), temperature)

    kls, ces = [], []
    for t, target in enumerate([0, 2]):
        log_s = _log_softmax([x / temperature for x in student[t]])
        log_t = _log_softmax([x / temperature for x in teacher[t]])
        kls.append(sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_t, log_s)))
        ces.append(-_log_softmax(student[t])[target])
    assert terms.tokens.item() == 2
    assert terms.kd.item() == pytest.approx(sum(kls) / 2, rel=1e-6)
    assert terms.ce.item() == pytest.approx(sum(ces) / 2, rel=1e-6)


def test_at_temperature_1_the_logits_are_not_copied() -> None:
    """Every path (KD's student and teacher, the teacher table, RL's policy) scales logits here: at 1
    the float32 logits come back as they are, since dividing would only write another (N, V) tensor."""
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    assert at_temperature(logits, 1.0) is logits
    torch.testing.assert_close(at_temperature(logits, 0.5), logits * 2)
    assert at_temperature(logits.half(), 1.0).dtype == torch.float32


def test_forward_kl_is_zero_when_student_is_teacher() -> None:
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, 1, 2, 3, 4], [-100, -100, 5, 6, -100]])
    assert loss_terms(logits, labels, logits.clone()).kd.item() == pytest.approx(0.0, abs=1e-7)


def test_loss_ignores_masked_positions_exactly() -> None:
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(1, 5, 7, generator=gen)
    labels = torch.tensor([[-100, 3, -100, -100, 4]])  # targets predicted at positions 0 and 3
    ignored = [1, 2, 4]

    def loss_and_grad(student: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        student = student.clone().requires_grad_(True)
        terms = loss_terms(student, labels, teacher)
        loss = terms.kd + terms.ce
        loss.backward()
        return loss.detach(), student.grad

    student = torch.randn(1, 5, 7, generator=gen)
    loss, grad = loss_and_grad(student)
    assert torch.all(grad[0, ignored] == 0)
    assert torch.all(grad[0, [0, 3]].abs().sum(-1) > 0)

    changed = student.clone()
    changed[0, ignored] = 100 * torch.randn(len(ignored), 7, generator=gen)
    loss2, grad2 = loss_and_grad(changed)
    assert torch.equal(loss, loss2)
    assert torch.equal(grad, grad2)


# ----------------------------------------------------------------------------------------- trainer


def dataset(tok):
    from datasets import Dataset

    questions = ["Who wrote the novel Moby Dick", "What is the capital of France", "Who wrote Moby Dick", "capital of France"]
    return Dataset.from_list([encode_segments(segments(q), tok, question=q) for q in questions] * 2)


def test_loss_weights_follow_the_mode(tmp_path) -> None:
    assert config(tmp_path).loss_weights(has_teacher=True) == (0.0, 1.0)
    assert config(tmp_path).loss_weights(has_teacher=False) == (1.0, 0.0)
    assert config(tmp_path, kd_lambda=0).loss_weights(has_teacher=True) == (1.0, 0.0)
    assert config(tmp_path, kd_lambda=1.0, ce_weight=0.5).loss_weights(has_teacher=True) == (0.5, 1.0)
    with pytest.raises(DGPOError, match="needs a teacher"):
        config(tmp_path, kd_lambda=1.0).loss_weights(has_teacher=False)
    with pytest.raises(DGPOError, match="both 0"):
        config(tmp_path, kd_lambda=0, ce_weight=0).loss_weights(has_teacher=True)


def test_trainer_loss_mixes_ce_and_kd(tok, tmp_path) -> None:
    student, teacher = tiny_qwen2(tok, seed=1), tiny_qwen2(tok, seed=0)
    batch = CompletionCollator.for_tokenizer(tok)(list(dataset(tok))[:3])

    plain = DistillTrainer(student, config(tmp_path, kd_lambda=0, ce_weight=1), tok, teacher_model=teacher)
    assert plain.teacher_model is None  # kd_lambda=0: no teacher forward at all
    with torch.no_grad():
        hf_ce = student(**batch).loss
        loss = plain.compute_loss(student, batch)
    assert loss.item() == pytest.approx(hf_ce.item(), rel=1e-5)

    mixed = DistillTrainer(student, config(tmp_path, kd_lambda=2.0, ce_weight=0.5), tok, teacher_model=teacher)
    with torch.no_grad():
        loss = mixed.compute_loss(student, batch)
        terms = loss_terms(student(**batch).logits, batch["labels"], teacher(**batch).logits)
    assert terms.kd.item() > 0
    assert loss.item() == pytest.approx(0.5 * terms.ce.item() + 2.0 * terms.kd.item(), rel=1e-5)


def ragged(tok):
    """Examples of very different lengths: the full trajectories cut short at several points."""
    from datasets import Dataset

    rows = list(dataset(tok))
    cuts = [len(rows[0]["input_ids"]) - k * 9 for k in range(len(rows))]
    return Dataset.from_list([{key: row[key][:cut] for key in ("input_ids", "completion_mask")} for row, cut in zip(rows, cuts)])


def loss_and_grads(trainer, model, batch):
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def same_grads(grads, expected) -> bool:
    """Equal up to float summation order: every tensor within 1e-4 of its own largest entry."""
    return all((g - w).abs().max() <= 1e-4 * w.abs().max() for g, w in zip(grads, expected, strict=True))


def test_length_chunks_cut_padding_and_leave_loss_and_gradients_as_they_were(tok, tmp_path) -> None:
    student, teacher = copy.deepcopy(tiny_qwen2(tok, seed=1)), tiny_qwen2(tok, seed=0)
    batch = CompletionCollator.for_tokenizer(tok)(list(ragged(tok)))
    chunks = length_chunks(batch, 3)
    assert [len(c["input_ids"]) for c in chunks] == [3, 3, 2]
    assert sum(c["input_ids"].numel() for c in chunks) < batch["input_ids"].numel()  # trailing padding gone
    assert all(c["attention_mask"][:, -1].any() for c in chunks)

    whole = loss_and_grads(DistillTrainer(student, config(tmp_path), tok, teacher_model=teacher), student, batch)
    for size in (1, 3):
        trainer = DistillTrainer(student, config(tmp_path, micro_batch_size=size), tok, teacher_model=teacher)
        loss, grads = loss_and_grads(trainer, student, batch)
        assert loss == pytest.approx(whole[0], rel=1e-5)
        assert same_grads(grads, whole[1])


def test_top_k_kl_is_the_full_kl_when_k_is_the_vocabulary_and_never_more_otherwise() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(40, 12, generator=gen), 3 * torch.randn(40, 12, generator=gen)
    targets = torch.randint(0, 12, (40,), generator=gen)
    full = target_loss_terms(student, targets, teacher).kd
    logp_s, logp_t = student.log_softmax(-1), teacher.log_softmax(-1)
    every = logp_t.topk(12, dim=-1)
    assert target_loss_terms(student, targets, TopK(every.indices, every.values)).kd.item() == pytest.approx(full.item(), rel=1e-5)
    for k in (1, 4, 8):
        top = logp_t.topk(k, dim=-1)
        kl = top_k_kl(logp_s, TopK(top.indices, top.values))
        assert (kl >= -1e-6).all() and kl.mean().item() <= full.item() + 1e-6
    assert top_k_kl(logp_t, TopK(top.indices, top.values)).abs().max().item() < 1e-5  # zero when the student is the teacher


def test_a_teacher_table_replaces_the_teachers_forward_with_the_same_loss(tok, tmp_path) -> None:
    student, teacher = copy.deepcopy(tiny_qwen2(tok, seed=1)), tiny_qwen2(tok, seed=0)
    examples = ragged(tok)
    live = DistillTrainer(student, config(tmp_path, micro_batch_size=2), tok, teacher_model=teacher, train_dataset=examples)
    tabled = DistillTrainer(
        student, config(tmp_path, micro_batch_size=2, teacher_top_k=len(tok)), tok, teacher_model=teacher, train_dataset=examples
    )
    assert tabled.teacher_model is None and len(tabled.teacher_table) == len(examples)  # no teacher forward in a step
    order = [5, 0, 3, 6, 1]  # a shuffled batch: rows are looked up by their dataset index
    batch = tabled.data_collator([tabled.train_dataset[i] for i in order])
    assert batch["example"].tolist() == order
    live_loss, live_grads = loss_and_grads(live, student, batch)
    loss, grads = loss_and_grads(tabled, student, batch)
    assert loss == pytest.approx(live_loss, rel=1e-5)
    assert same_grads(grads, live_grads)

    top_8 = DistillTrainer(student, config(tmp_path, teacher_top_k=8), tok, teacher_model=teacher, train_dataset=examples)
    assert all(row.ids.shape[1] == 8 for row in top_8.teacher_table)
    assert 0 < top_8.compute_loss(student, batch).item() <= live_loss + 1e-6


def test_chunk_and_table_sizes_are_checked(tmp_path) -> None:
    for name in ("micro_batch_size", "teacher_top_k"):
        with pytest.raises(DGPOError, match=f"{name} must be at least 1"):
            config(tmp_path, **{name: 0})


def test_padded_teacher_embeddings_are_sliced(tok, tmp_path) -> None:
    student = tiny_qwen2(tok, seed=1)
    teacher = copy.deepcopy(tiny_qwen2(tok, seed=0))
    teacher.resize_token_embeddings(len(tok) + 64, mean_resizing=False)
    with torch.no_grad():
        teacher.get_output_embeddings().weight[len(tok) :] = 1.0  # padding rows that would dominate a softmax
    batch = CompletionCollator.for_tokenizer(tok)(list(dataset(tok))[:2])
    trainer = DistillTrainer(student, config(tmp_path), tok, teacher_model=teacher)
    with torch.no_grad():
        loss = trainer.compute_loss(student, batch)
        expected = loss_terms(student(**batch).logits, batch["labels"], teacher(**batch).logits[..., : len(tok)]).kd
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_vocabulary_mismatch_is_a_one_line_error(tok, tmp_path) -> None:
    small_tok = tiny_tokenizer(vocab_size=300)
    with pytest.raises(DGPOError) as err:
        DistillTrainer(tiny_qwen2(tok), config(tmp_path), tok, teacher_model=tiny_qwen2(small_tok))
    assert str(err.value) == (
        f"teacher and student vocabularies differ ({len(small_tok)} vs {len(tok)}): distil between models that share a tokenizer"
    )

    other_tok = tiny_tokenizer(texts=["A different corpus gives different merges and ids."])
    with pytest.raises(DGPOError, match=r"^teacher and student vocabularies differ \(\d+ vs \d+\)[^\n]*$"):
        DistillTrainer(tiny_qwen2(tok), config(tmp_path), tok, teacher_model=tiny_qwen2(tok), teacher_tokenizer=other_tok)


def mean_terms(model, tok, teacher=None):
    batch = CompletionCollator.for_tokenizer(tok)(list(dataset(tok)))
    with torch.no_grad():
        teacher_logits = teacher(**batch).logits if teacher is not None else None
        return loss_terms(model(**batch).logits, batch["labels"], teacher_logits)


def test_sft_steps_reduce_loss(tok, tmp_path) -> None:
    model = copy.deepcopy(tiny_qwen2(tok))
    before = mean_terms(model, tok).ce.item()
    metrics = train_sft(model, tok, dataset(tok), config(tmp_path, max_steps=12))
    after = mean_terms(model.eval(), tok).ce.item()
    assert metrics["train_loss"] > 0
    assert after < 0.5 * before


def test_kd_steps_move_student_towards_teacher(tok, tmp_path) -> None:
    student, teacher = copy.deepcopy(tiny_qwen2(tok, seed=1)), tiny_qwen2(tok, seed=0)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    before = mean_terms(student, tok, teacher).kd.item()

    trainer = DistillTrainer(student, config(tmp_path, max_steps=12), tok, teacher_model=teacher, train_dataset=dataset(tok))
    trainer.train()
    after = mean_terms(student.eval(), tok, teacher).kd.item()

    assert after < 0.7 * before
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())  # ran under no_grad
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    logged = [entry for entry in trainer.state.log_history if "kd" in entry]
    assert logged and all("ce" in entry for entry in logged)


def test_train_kd_returns_metrics(tok, tmp_path) -> None:
    student = copy.deepcopy(tiny_qwen2(tok, seed=1))
    metrics = train_kd(student, tiny_qwen2(tok, seed=0), tok, dataset(tok), config(tmp_path, max_steps=2))
    assert metrics["train_loss"] > 0 and metrics["train_steps_per_second"] > 0


def test_cold_start_loss_gradient_is_exactly_zero_where_retrieved_text_is_the_target(tok, tmp_path) -> None:
    """The must-show: through the real example builder, collator and trainer loss, the logits that
    predict retrieved ``<information>`` tokens (or the prompt) get exactly zero gradient; every logit
    that predicts a model token gets some.

    The trainer projects only target positions through the LM head, so the loss sees logits for
    exactly the model-token targets, and the head's full input (every position's hidden state) gets
    exactly zero gradient elsewhere: a logit that is never computed cannot move.
    """
    example = encode_segments(segments(), tok, question=QUESTION)
    batch = CompletionCollator.for_tokenizer(tok)([example])
    student, teacher = copy.deepcopy(tiny_qwen2(tok, seed=0)), tiny_qwen2(tok, seed=1)
    trainer = DistillTrainer(model=student, args=config(tmp_path, kd_lambda=1.0, ce_weight=1.0), processing_class=tok, teacher_model=teacher)

    captured = {}

    def keep_grads(module, args) -> None:
        args[0].register_hook(lambda grad: captured.setdefault("hidden", grad))

    def keep_logits(module, args, logits) -> None:
        captured["rows"] = logits.shape[0]
        logits.register_hook(lambda grad: captured.setdefault("logits", grad))

    hooks = [student.lm_head.register_forward_pre_hook(keep_grads), student.lm_head.register_forward_hook(keep_logits)]
    trainer.compute_loss(student, batch).backward()
    for hook in hooks:
        hook.remove()

    mask = example["completion_mask"]
    targets_env = [t for t in range(len(mask) - 1) if not mask[t + 1]]
    targets_model = [t for t in range(len(mask) - 1) if mask[t + 1]]
    info = tok.convert_tokens_to_ids("<information>")
    assert any(example["input_ids"][t + 1] == info for t in targets_env)  # the observation is among them
    assert captured["rows"] == len(targets_model)  # logits exist only where a model token is the target
    assert torch.all(captured["logits"].abs().sum(-1) > 0)
    hidden = captured["hidden"][0]
    assert torch.all(hidden[targets_env] == 0)
    assert torch.all(hidden[targets_model].abs().sum(-1) > 0)
