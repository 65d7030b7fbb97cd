"""Eval loss means cross-entropy under every loss (issue 11, item 4).

``eval_loss`` in metrics.jsonl and summary.json is the token cross-entropy of the eval set, computed
here by hand from the saved model; the loss being trained is ``eval_objective`` beside it; early
stopping goes by ``eval_loss`` unless ``metric_for_best_model`` says otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from sftlab.config import TrainConfig
from sftlab.models.tokens import IGNORE_INDEX
from sftlab.recipes.train import finish_train, prepare_train
from sftlab.train.losses import cross_entropy, dft_loss, gem_loss


@pytest.fixture(scope="module")
def alpaca_file(tmp_path_factory, shared_data) -> Path:
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:60]
    path = tmp_path_factory.mktemp("eval_loss") / "alpaca_60.json"
    path.write_text(json.dumps(records))
    return path


def _cfg(model_dir: Path, train_file: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        model_name_or_path=str(model_dir),
        train_file=[str(train_file)],
        output_dir=str(out),
        max_length=96,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=5,  # uneven batches: a mean of batch means would not be the set's mean
        eval_fraction=0.2,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-2,
    )
    return TrainConfig(**{**base, **kw})


def _by_hand(model: torch.nn.Module, rows: list[dict], loss: str) -> tuple[float, float]:
    """Summed token cross-entropy and the summed objective over every eval row, one row at a time, / token count."""
    ce = objective = 0.0
    count = 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            logits = model(input_ids=ids).logits
            ce += F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum").item()
            if loss == "label_smoothing":
                objective += cross_entropy(logits, labels, num_items_in_batch=1, label_smoothing=0.2).item()
            else:
                fn = gem_loss if loss == "gem" else dft_loss
                objective += fn(logits, labels, num_items_in_batch=1).item()
            count += int((labels[0, 1:] != IGNORE_INDEX).sum())
    return ce / count, objective / count


@pytest.mark.parametrize("loss", ["gem", "dft", "label_smoothing"])
def test_eval_loss_is_cross_entropy_and_objective_is_the_loss(loss, tiny_model_dir, alpaca_file, tmp_path):
    run = tmp_path / loss
    extra = {"label_smoothing_factor": 0.2} if loss == "label_smoothing" else {}
    session = prepare_train(_cfg(tiny_model_dir, alpaca_file, run, loss=loss, **extra))
    rows = [session.data.eval[i] for i in range(len(session.data.eval))]
    out = finish_train(session)

    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in evals if "eval_loss" in m]
    assert [m["step"] for m in evals] == [0, 3]  # on start, and at the end
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ce, objective = _by_hand(model, rows, loss)
    assert evals[-1]["eval_loss"] == pytest.approx(ce, rel=1e-5)
    assert evals[-1]["eval_objective"] == pytest.approx(objective, rel=1e-5)
    assert abs(ce - objective) > 1e-3  # different quantities here, far apart at the tolerance above
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_loss_last"] == evals[-1]["eval_loss"]
    assert summary["eval_objective_last"] == evals[-1]["eval_objective"]
    assert summary["eval_loss_first"] == evals[0]["eval_loss"]


def test_eval_objective_equals_eval_loss_under_cross_entropy(tiny_model_dir, alpaca_file, tmp_path):
    run = tmp_path / "ce"
    finish_train(prepare_train(_cfg(tiny_model_dir, alpaca_file, run, max_steps=1)))
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in evals if "eval_loss" in m]
    assert evals and all(m["eval_objective"] == pytest.approx(m["eval_loss"], rel=1e-12) for m in evals)


@pytest.mark.parametrize("metric", ["eval_loss", "eval_objective"])
def test_early_stopping_goes_by_the_configured_metric(metric, tiny_model_dir, alpaca_file, tmp_path):
    cfg = _cfg(
        tiny_model_dir, alpaca_file, tmp_path / metric, loss="gem", max_steps=4, eval_strategy="steps",
        eval_steps=1, early_stopping_patience=3, metric_for_best_model=metric,
    )
    session = prepare_train(cfg)
    assert session.trainer.args.metric_for_best_model == metric
    finish_train(session)
    state = session.trainer.state
    values = {h["step"]: h[metric] for h in state.log_history if metric in h and h["step"] > 0}
    best_step = min(values, key=values.get)
    assert state.best_metric == pytest.approx(values[best_step])
    assert state.best_global_step == best_step


def test_metric_for_best_model_defaults_to_eval_loss() -> None:
    assert TrainConfig(model_name_or_path="m", train_file="t").metric_for_best_model == "eval_loss"
