"""EWC, elastic weight consolidation (Kirkpatrick et al. 2017): ``ewc: {lambda, fisher_corpus, fisher_samples}``.

(lambda / 2) * sum_i F_i (theta_i - theta*_i)^2 with F the diagonal Fisher on reference text; the penalty and
the Fisher are in ``sftlab.train.regularizers``. The Fisher is cached in the run dir and reused on resume.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field

from sftlab.errors import UserError
from sftlab.settings import StrictModel
from sftlab.train.remedies.base import Attached, Remedy, RemedyContext


class EwcSettings(StrictModel):
    """Elastic weight consolidation with a diagonal Fisher on reference text."""

    lambda_: float = Field(1.0, alias="lambda", ge=0)
    fisher_corpus: str
    fisher_samples: int = Field(64, ge=1)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def build(ctx: RemedyContext) -> Attached:
    """EWC on the shared anchor, with the Fisher read from ``run_dir`` or computed on ``fisher_corpus``.

    In a multi-process run the registry builds under ``main_process_first``, so the main process computes
    the Fisher and the others read it. Under FSDP or DeepSpeed the Trainer has not moved the model yet, so
    the Fisher is computed where the model was loaded (the CPU), once per run.
    """
    from sftlab.data.readers import read_texts
    from sftlab.train.regularizers import EWC, FISHER_FILE, fisher_sequences, load_or_compute_fisher

    cfg, ewc = ctx.cfg, ctx.cfg.ewc
    assert ctx.trainer is not None and ctx.run_dir is not None
    if not Path(ewc.fisher_corpus).exists():
        raise UserError(f"ewc.fisher_corpus not found: {ewc.fisher_corpus}")
    anchor = ctx.anchor()
    model_path = Path(cfg.model_name_or_path).expanduser()
    meta = {  # what the cached Fisher was computed from: a change recomputes it
        "model": str(model_path.resolve()) if model_path.exists() else cfg.model_name_or_path,
        "method": cfg.method,
        "fisher_corpus": str(Path(ewc.fisher_corpus).resolve()),
        "fisher_samples": str(ewc.fisher_samples),
        "max_length": str(cfg.max_length),
        "seed": str(cfg.seed),
    }
    fisher = load_or_compute_fisher(
        ctx.trainer.model,
        anchor.names,
        Path(ctx.run_dir) / FISHER_FILE,
        lambda: fisher_sequences(read_texts(ewc.fisher_corpus), ctx.tokenizer, ewc.fisher_samples, cfg.max_length,
                                 cfg.seed),
        meta,
    )
    return Attached(penalty=EWC(anchor, fisher, ewc.lambda_))


REMEDY = Remedy(
    key="ewc",
    stage="after_trainer",
    summary="EWC: an L2 pull to the starting weights, each weighted by its diagonal Fisher on reference text",
    fields={"ewc": (EwcSettings | None, None)},
    active=lambda cfg: cfg.ewc is not None,
    describe=lambda cfg: f"EWC lambda {cfg.ewc.lambda_} (Fisher on {cfg.ewc.fisher_samples} samples)",
    build=build,
)
