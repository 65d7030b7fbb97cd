"""Token constants that every stage shares: the label that scores nothing, and the cross-entropy's slice.

They sit on the ground floor because data (masking prompts), training (losses, penalties) and the audit
(teacher forcing) all use them, and none of those should import another for a constant.
"""

from __future__ import annotations

# The label of a position that is not trained or scored (a prompt token, padding): transformers' and
# PyTorch's ``ignore_index`` convention.
IGNORE_INDEX = -100
# Logits per slice of the cross-entropy: 12.6 MB of float32, 64 rows of SmolLM2's 49,152-token vocabulary,
# inside glibc's reused heap (its mmap threshold grows to 32 MB) and the last-level cache of most CPUs.
# Logits that fit in one slice keep F.cross_entropy (see sftlab.train.losses.cross_entropy).
SLICE_ELEMENTS = 64 * 49152


def rows_per_slice(vocab: int) -> int:
    """How many rows of ``vocab``-wide logits one slice of a vocabulary-wide computation takes."""
    return max(1, SLICE_ELEMENTS // vocab)
