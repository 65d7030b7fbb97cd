"""Regional compilation: ``torch.compile`` on each repeated transformer block, in place.

A decoder's blocks share one class and one forward, so compiling them one after another hits dynamo's
cache after the first. SmolLM2's 30 blocks compile in about 18 s on 2 CPU cores, where one
``torch.compile`` of the whole model took 150 s. What inductor buys on a CPU is the elementwise work
between the matmuls: RMSNorm, RoPE, the SwiGLU gate and autocast's casts become a few generated C++
loops per block instead of dozens of separate kernels, each reading and writing the activations again.

The compile is in place (``Module.compile()``), so parameter names keep no ``_orig_mod.`` prefix: the
checkpoints, adapters and saved model of a compiled run are those of an uncompiled one. Everything
outside the blocks stays eager: the embedding (NEFTune's hook), the final norm and the output head,
whose scored-positions hook gathers a number of rows that changes with every batch.

Padded batches change length from batch to batch. Dynamo compiles the first shape statically and, at
the first other length, once more with a symbolic length, which then serves every later batch. SDPA
attention takes no mask for a batch that needs none (no padding, one document a row), which is one more
graph; eager attention always takes one.
"""

from __future__ import annotations

import torch


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile, in place, every block of each list of same-class blocks in ``model``; returns how many.

    A model with no such list (nothing repeats) is left as it is, and 0 comes back. Lists nested inside a
    compiled block are part of its graph and are not compiled again.
    """
    compiled = 0
    pending = [model]
    while pending:
        module = pending.pop()
        if _is_block_list(module):
            for block in module:
                block.compile()
                compiled += 1
        else:
            pending.extend(module.children())
    return compiled


def _is_block_list(module: torch.nn.Module) -> bool:
    """A ``ModuleList`` whose members are all of one class: a stack of transformer blocks."""
    return (isinstance(module, torch.nn.ModuleList) and len(module) > 0
            and all(type(block) is type(module[0]) for block in module))
