"""Token-level view of the shift: each tuned answer with every token coloured by its AlignTDS class.

Hovering a token shows its rank under the base, the base's and the tuned model's probability of it,
KL(tuned || base) at that position and the token the base preferred.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from sftlab.audit.shift import CLASS_NAMES, AnswerShift

TOKEN_CSS = """
.answer { font: 14px/1.9 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre-wrap;
  word-break: break-word; background: #fff; border: 1px solid #e3e6ea; border-radius: 8px; padding: 10px 14px; }
.tok { border-radius: 3px; padding: 1px 0; box-shadow: inset -1px 0 0 rgba(0, 0, 0, 0.12); }
.tok.unshifted { background: #e3f4e9; }
.tok.marginal { background: #fbe8b5; }
.tok.shifted { background: #f6b8a6; box-shadow: inset -1px 0 0 rgba(0, 0, 0, 0.12), inset 0 -2px 0 #e4572e; }
.answer.empty { color: #888; font-style: italic; }
.prompt { color: #555; font-size: 13px; margin: 14px 0 4px; }
.legend span { display: inline-block; margin-right: 12px; padding: 1px 8px; border-radius: 3px; font-size: 13px; }
"""


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded answer.

    Decoding tokens one by one would break characters split across byte-level tokens; instead each
    piece is the growth of the decoded prefix, and a token that ends mid-character adds nothing until
    the token that completes it.
    """
    pieces, shown = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(list(ids[: i + 1]))
        if text.endswith("\ufffd") and i < len(ids) - 1:
            pieces.append("")
            continue
        pieces.append(text[len(shown):])
        shown = text
    return pieces


def _visible(piece: str, at_line_start: bool) -> tuple[str, bool]:
    """Escaped display text of a piece: each newline shown as ↵, and a real line break only where the
    line is not already empty, so a run of newlines cannot fill the page with blank lines."""
    out = []
    for ch in piece:
        if ch == "\n":
            out.append("↵" + ("" if at_line_start else "\n"))
            at_line_start = True
        else:
            out.append(html.escape(ch))
            at_line_start = False
    return "".join(out), at_line_start


def answer_html(shift: AnswerShift, tokenizer: PreTrainedTokenizerBase) -> str:
    """One answer as coloured spans, each with a tooltip of its scores."""
    spans = []
    at_line_start = True
    for i, piece in enumerate(token_pieces(tokenizer, shift.token_ids)):
        cls = CLASS_NAMES[int(shift.classes[i])]
        title = (f"rank {int(shift.ranks[i])} under the base · p_base {shift.base_prob[i]:.3f} · "
                 f"p_tuned {shift.tuned_prob[i]:.3f} · KL {shift.kl[i]:.3f} · "
                 f"base preferred {tokenizer.decode([int(shift.base_top[i])])!r}")
        text, at_line_start = _visible(piece, at_line_start)
        spans.append(f'<span class="tok {cls}" title="{html.escape(title)}">{text or "&#8203;"}</span>')
    if not spans:
        return '<div class="answer empty">(empty answer)</div>'
    return '<div class="answer">' + "".join(spans) + "</div>"


def legend_html() -> str:
    """The colour key."""
    items = [("unshifted", "rank 1"), ("marginal", "rank 2-3"), ("shifted", "rank > 3")]
    return '<p class="legend">' + "".join(
        f'<span class="tok {c}">{c}: {r}</span>' for c, r in items) + "</p>"


def answers_html(prompts: Sequence[str], shifts: Sequence[AnswerShift], tokenizer: PreTrainedTokenizerBase,
                 limit: int | None = None) -> str:
    """Prompt + coloured answer blocks, for the first ``limit`` answers (all when None)."""
    blocks = []
    for prompt, shift in list(zip(prompts, shifts))[:limit]:
        blocks.append(f'<div class="prompt">▸ {html.escape(prompt)}</div>' + answer_html(shift, tokenizer))
    return "\n".join(blocks)


def token_view_page(title: str, per_model: dict[str, tuple[Sequence[str], Sequence[AnswerShift]]],
                    tokenizer: PreTrainedTokenizerBase) -> str:
    """A standalone HTML page with every tuned model's answers coloured by class."""
    body = []
    for model, (prompts, shifts) in per_model.items():
        body.append(f"<h2>{html.escape(model)}</h2>" + answers_html(prompts, shifts, tokenizer))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body {{ font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 980px;
margin: 24px auto; padding: 0 16px; color: #1d2330; background: #f7f8fa; }} {TOKEN_CSS}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Each tuned answer, teacher-forced through the base model. Colour = rank of the chosen token in the base's
next-token distribution. Hover a token for its scores.</p>
{legend_html()}
{"".join(body)}
</body></html>
"""
