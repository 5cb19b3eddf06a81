"""Base-model pretraining: a causal LM over every world passage, rendered as retrieved documents.

The base models "have read the encyclopedia", as a real base model has (questions are held out, the
corpus is not), and a share of the sequences is the copy curriculum. Passages are packed exactly as
the agent sees them (``<information>Doc i(Title: …) …</information>``, via ``protocol.information``).
Training uses transformers' ``Trainer``, budgeted in optimiser steps, checkpointed and resumable.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dgpo_agent import protocol
from dgpo_agent.training.callbacks import train_resumable
from dgpo_agent.training.copy_curriculum import copy_examples, world_names

DOCS_PER_BLOCK = 3  # the agent's default top_k: a block looks like one search's results
TOKENIZE_BATCH = 256  # texts per call of the fast tokenizer


@dataclass
class PretrainConfig:
    """Settings of one pretraining run; the budget is ``steps`` optimiser steps of ``batch_size`` x ``seq_len``."""

    steps: int = 400
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 1e-3
    warmup_steps: int = 20
    copy_fraction: float = 0.3  # share of sequences drawn from the copy curriculum
    seed: int = 0
    log_every: int = 10
    save_every: int = 100
    save_dir: str = "runs/base"


def pretrain(
    model: Any, tokenizer: Any, corpus_records: Sequence[dict], config: PretrainConfig, sequences: list[list[int]] | None = None
) -> dict:
    """Train ``model`` in place on ``sequences`` (default: ``training_sequences``), resuming from the last
    checkpoint in ``save_dir``; save the final model and tokenizer there. Returns the last logged loss,
    the training tokens/s and the wall seconds."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    start = time.perf_counter()
    args = TrainingArguments(
        output_dir=config.save_dir,
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="cosine",
        logging_steps=config.log_every,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_every,
        save_total_limit=2,
        seed=config.seed,
        use_cpu=True,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        report_to="none",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=lm_dataset(sequences if sequences is not None else training_sequences(tokenizer, corpus_records, config)),
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    result = train_resumable(trainer)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    steps_run = result["steps"] - result["resumed_from"]
    return {
        "steps": result["steps"],
        "resumed_from": result["resumed_from"],
        "final_loss": losses[-1] if losses else None,
        "tokens_per_s": steps_run * config.batch_size * config.seq_len / result["train_runtime"],
        "wall_s": time.perf_counter() - start,
    }


def training_sequences(tokenizer: Any, corpus_records: Sequence[dict], config: PretrainConfig) -> list[list[int]]:
    """``steps * batch_size`` packed sequences: passage blocks, and ``copy_fraction`` of them curriculum.

    Built from the seed alone, so a resumed run trains on the same data.
    """
    total = config.steps * config.batch_size
    copies = round(total * config.copy_fraction)
    blocks = passage_blocks(corpus_records, random.Random(f"{config.seed}:blocks"))
    curriculum = copy_examples(config.seed, world_names(corpus_records))
    return pack(blocks, tokenizer, config.seq_len, total - copies) + pack(curriculum, tokenizer, config.seq_len, copies)


def passage_blocks(corpus_records: Sequence[dict], rng: random.Random) -> Iterator[str]:
    """Endless ``<information>`` blocks of ``DOCS_PER_BLOCK`` passages; each pass covers every passage once."""
    docs = [{**record, "score": 0.0} for record in corpus_records]
    while True:
        order = rng.sample(docs, len(docs))
        for i in range(0, len(order), DOCS_PER_BLOCK):
            yield protocol.information(order[i : i + DOCS_PER_BLOCK])


def pack(texts: Iterable[str], tokenizer: Any, seq_len: int, count: int) -> list[list[int]]:
    """The first ``count`` chunks of ``seq_len`` ids from the texts, each text followed by EOS."""
    chunks: list[list[int]] = []
    buffer: list[int] = []
    texts = iter(texts)
    while len(chunks) < count:
        batch = [text for _, text in zip(range(TOKENIZE_BATCH), texts)]
        if not batch:
            raise ValueError(f"the texts ran out after {len(chunks)} of {count} sequences")
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            buffer += ids + [tokenizer.eos_token_id]
        while len(buffer) >= seq_len and len(chunks) < count:
            chunks.append(buffer[:seq_len])
            buffer = buffer[seq_len:]
    return chunks


def lm_dataset(sequences: list[list[int]]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": sequences, "labels": sequences}).with_format("torch")
