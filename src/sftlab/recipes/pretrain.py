"""``sftlab pretrain``: a byte-level BPE tokenizer and a small GPT-2/Llama trained from scratch on text.

Run dir: ``output_dir/{config.yaml, tokenizer/, model/, metrics.jsonl, checkpoints/}``. ``model/`` holds
the weights (safetensors) and the tokenizer, so ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` both load it. A rerun with the same config resumes from the last
complete checkpoint (a finished run then only re-saves); a changed config is refused.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from transformers import AutoModelForCausalLM, set_seed

from sftlab.config import PretrainConfig, dump_config
from sftlab.errors import UserError
from sftlab.models.load import load_tokenizer
from sftlab.models.tiny import build_config, save_tokenizer, train_tokenizer
from sftlab.train.callbacks import attach_callbacks, disable_library_bars, summarize_logs
from sftlab.train.pretrain import BlockDataset, collate_blocks, make_blocks, split_documents, token_stream
from sftlab.train.resume import check_resume_config
from sftlab.train.run_dir import last_complete_checkpoint, save_final
from sftlab.train.trainer import SFTLabTrainer
from sftlab.train.training_args import make_training_arguments

# Keys a resumed run may change: they alter logging, saving or how long it runs, not what it learns.
RESUME_SAFE = {"output_dir", "logging_steps", "save_steps", "max_steps", "num_train_epochs"}


def run_pretrain(cfg: PretrainConfig) -> Path:
    """Read the corpus and pretrain on it; returns the saved model dir (``output_dir/model``)."""
    from sftlab.data.readers import read_texts

    texts = [text for path in cfg.corpus for text in read_texts(path)]
    return pretrain_on_texts(cfg, texts)


def pretrain_on_texts(cfg: PretrainConfig, texts: list[str]) -> Path:
    """Pretrain on in-memory documents (``cfg.corpus`` only recorded); returns ``output_dir/model``."""
    console = Console()
    disable_library_bars()
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = last_complete_checkpoint(run_dir / "checkpoints")
    if resume:
        check_resume_config(run_dir, cfg.model_dump(mode="json", by_alias=True), resume, RESUME_SAFE)
    dump_config(cfg, run_dir / "config.yaml")
    set_seed(cfg.seed)

    if len(texts) < 2:
        raise UserError(
            f"the pretraining corpus ({', '.join(cfg.corpus)}) has {len(texts)} document(s); it needs at least 2 "
            "(one is held out for validation): separate documents by blank lines, or use jsonl with a `text` key"
        )
    train_texts, val_texts = split_documents(texts, cfg.eval_fraction, cfg.seed)
    tokenizer = _tokenizer(cfg, run_dir, train_texts, resume is not None)
    train_blocks = make_blocks(token_stream(train_texts, tokenizer), cfg.max_length)
    val_blocks = make_blocks(token_stream(val_texts, tokenizer), cfg.max_length)
    if len(train_blocks) == 0 or len(val_blocks) == 0:
        raise UserError(
            f"the corpus is too small for max_length {cfg.max_length}: {len(train_blocks)} training and "
            f"{len(val_blocks)} validation blocks; lower max_length or raise eval_fraction"
        )

    dims = cfg.model
    model_config = build_config(
        len(tokenizer),
        dims.architecture,
        dims.size,
        max_position_embeddings=dims.max_position_embeddings or cfg.max_length,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        n_layer=dims.n_layer,
        n_embd=dims.n_embd,
        n_head=dims.n_head,
        dropout=dims.dropout,
    )
    model = AutoModelForCausalLM.from_config(model_config)

    args = make_training_arguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="cosine",
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps",
        eval_steps=cfg.save_steps,
        eval_on_start=resume is None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        prediction_loss_only=True,
        remove_unused_columns=False,
    )
    trainer = SFTLabTrainer(
        model=model,
        args=args,
        train_dataset=BlockDataset(train_blocks),
        eval_dataset=BlockDataset(val_blocks),
        data_collator=collate_blocks,
        processing_class=tokenizer,
    )
    attach_callbacks(trainer, run_dir, "pretrain")
    if resume and trainer.is_world_process_zero():
        console.print(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    if not any("eval_loss" in h and h.get("step") == trainer.state.global_step for h in trainer.state.log_history):
        trainer.evaluate()
    model_dir = save_final(trainer, run_dir / "model")

    if trainer.is_world_process_zero():
        first, last = summarize_logs(trainer.state.log_history, "eval_loss")
        n_params = sum(p.numel() for p in model.parameters())
        console.print(
            f"pretrained a {dims.architecture} of {n_params / 1e6:.2f}M parameters on {train_blocks.numel():,} "
            f"tokens per epoch ({len(train_blocks):,} blocks of {cfg.max_length}); val loss {first:.4f} -> {last:.4f}"
        )
        console.print(f"model and tokenizer: {model_dir}")
    return model_dir


def _tokenizer(cfg: PretrainConfig, run_dir: Path, texts: list[str], resuming: bool):
    """The configured tokenizer; else the one this run trained before (on resume); else a new BPE."""
    saved = run_dir / "tokenizer"
    if cfg.tokenizer.path:
        return load_tokenizer(cfg.tokenizer.path)
    if resuming and saved.is_dir():
        return load_tokenizer(str(saved))
    tokenizer = train_tokenizer(texts, vocab_size=cfg.tokenizer.vocab_size, min_frequency=cfg.tokenizer.min_frequency)
    save_tokenizer(tokenizer, saved)
    return tokenizer
