"""Data preparation: sftlab against TRL's SFTTrainer on the same records, tokenizer and max_length.

Both sides start from the same Alpaca records (the prompt rendered with the same Alpaca template) and
end with trainer-ready rows: tokenized, prompt masked, EOS appended, packed best-fit-decreasing. The
peer is TRL's own preparation (``SFTTrainer._prepare_dataset``, the code its constructor runs), in one
process like ours. Reported: preparation time and its ratio, and the real-token fraction of the rows
when each row is padded to max_length, for sftlab packing, TRL packing, and plain padding to max_length.

    .venv/bin/python bench/data_pipeline.py [--max-length 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import shared_data  # first: it puts the process offline before any HF library loads

SHARED = shared_data()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sftlab.data.packing import pack_examples, real_token_fraction
    from sftlab.data.readers import read_records
    from sftlab.data.tokenize import Encoder, render_prompt
    from sftlab.models.tiny import build_config, train_tokenizer

    datasets.disable_progress_bars()
    alpaca = SHARED / "alpaca" / "alpaca_5000.json"
    records = read_records([alpaca]).records
    tokenizer = train_tokenizer(
        [(r.prompt or "") + " " + (r.completion or "") for r in records[:2000]], vocab_size=4096
    )
    L = args.max_length

    def ours() -> tuple[float, list[int]]:
        start = time.perf_counter()
        examples, _ = Encoder(tokenizer).encode(records, L)
        rows = pack_examples(examples, L)
        return time.perf_counter() - start, [len(r) for r in rows]

    # TRL gets the prompt already rendered with the same template, as a prompt/completion dataset.
    pairs = [{"prompt": render_prompt(tokenizer, r.as_messages()[:1]), "completion": r.completion} for r in records]
    model = AutoModelForCausalLM.from_config(build_config(len(tokenizer), "gpt2", "tiny", max_position_embeddings=L))
    cfg = SFTConfig(
        output_dir="/tmp/bench_data_pipeline",
        max_length=L,
        packing=True,
        packing_strategy="bfd",
        completion_only_loss=True,
        report_to=[],
        use_cpu=True,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=model, args=cfg, train_dataset=datasets.Dataset.from_list(pairs[:8]), processing_class=tokenizer
    )

    def trl() -> tuple[float, list[int]]:
        dataset = datasets.Dataset.from_list(pairs)
        start = time.perf_counter()
        packed = trainer._prepare_dataset(dataset, tokenizer, cfg, True, None, "train")
        return time.perf_counter() - start, [len(ids) for ids in packed["input_ids"]]

    ours_runs = [ours() for _ in range(args.repeats)]
    trl_runs = [trl() for _ in range(args.repeats)]
    ours_s = statistics.median(t for t, _ in ours_runs)
    trl_s = statistics.median(t for t, _ in trl_runs)
    examples, stats = Encoder(tokenizer).encode(records, L)
    result = {
        "records": len(records),
        "max_length": L,
        "tokens": stats.tokens,
        "sftlab_seconds": round(ours_s, 3),
        "trl_seconds": round(trl_s, 3),
        "speedup_vs_trl": round(trl_s / ours_s, 2),
        "real_token_fraction": {
            "sftlab_packed": round(real_token_fraction(ours_runs[0][1], L), 4),
            "trl_bfd_packed": round(real_token_fraction(trl_runs[0][1], L), 4),
            "padded_to_max_length": round(real_token_fraction([len(e.input_ids) for e in examples], L), 4),
        },
        "rows": {"sftlab": len(ours_runs[0][1]), "trl": len(trl_runs[0][1]), "padded": len(examples)},
        "tokens_in_rows": {"sftlab": sum(ours_runs[0][1]), "trl": sum(trl_runs[0][1])},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
