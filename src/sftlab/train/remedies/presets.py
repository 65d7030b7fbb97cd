"""Presets: a published method that is a combination of existing remedies expands into their keys
(``preset: asft``). A preset is not a remedy of its own: it only fills in keys when the config is read.

ASFT (Zhu et al. 2025, "Anchored Supervised Fine-Tuning", arXiv:2509.23753) is DFT plus a KL anchor to the base.
The official code (github.com/zhuchichi56/ASFT, train.py / train_v2.py, mode "asft") adds
kl_weight * F.kl_div(log_softmax(tuned), softmax(base)).sum(-1) per token: the forward KL KL(p_base || p_tuned)
over the full vocabulary, at the target (response) positions only, averaged with the DFT term over those tokens,
kl_weight 0.1. sftlab's kl_to_base {direction: forward, on: response} is that term, so beta here is the paper's
kl_weight. NVIDIA NeMo-RL's port instead estimates a reverse KL from the target tokens' log-ratios alone; its
weight does not transfer to this full-vocabulary form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

if TYPE_CHECKING:
    from sftlab.config import TrainConfig

PRESETS: dict[str, dict[str, Any]] = {
    "asft": {"loss": "dft", "kl_to_base": {"beta": 0.1, "direction": "forward", "on": "response"}},
}
# The keys of a preset a user may retune; any other key the preset sets must be left to it.
PRESET_TUNABLE: dict[str, set[str]] = {"asft": {"kl_to_base.beta"}}
DESCRIPTIONS: dict[str, str] = {"asft": "ASFT preset: DFT + forward KL to the base on response tokens"}

FIELD = (Literal["asft"] | None, Field(
    None, description="a published method made of these parts: asft = loss dft + kl_to_base (forward, on "
    "response, beta 0.1), as the ASFT paper's code; kl_to_base.beta may be retuned"
))


def expand_preset(data: dict[str, Any]) -> dict[str, Any]:
    """``preset: NAME`` filled in with the keys it stands for; a key set against the preset is an error.

    A user may retune what ``PRESET_TUNABLE`` lists (ASFT's ``kl_to_base.beta``); setting another of
    the preset's keys to the value the preset gives is allowed (so a saved, expanded config reloads).
    """
    name = data.get("preset")
    if name is None:
        return data
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    out = dict(data)
    for key, value in PRESETS[name].items():
        given = out.get(key)
        if isinstance(value, dict):
            if key in out and not isinstance(given, dict):
                raise ValueError(f"preset {name} sets {key}; remove {key}: {given!r} or the preset")
            merged = {**value, **(given or {})}
            for sub, sub_value in value.items():
                if merged[sub] != sub_value and f"{key}.{sub}" not in PRESET_TUNABLE[name]:
                    raise ValueError(
                        f"preset {name} sets {key}.{sub}: {sub_value} (as its paper does); "
                        f"got {merged[sub]!r}. Drop the preset to change it"
                    )
            out[key] = merged
        elif key in out and given != value:
            raise ValueError(f"preset {name} sets {key}: {value}; got {key}: {given!r}. Drop one of them")
        else:
            out[key] = value
    return out


def describe_preset(cfg: TrainConfig) -> str | None:
    """The setup table's phrase for the config's preset (None without one)."""
    return DESCRIPTIONS[cfg.preset] if cfg.preset else None
