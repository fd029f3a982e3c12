"""`miras convert`: a run folder to a Hugging Face folder (`to-hf RUN OUT`) and back (`from-hf HF_DIR OUT`).

Needs the optional extra `pip install miras[hf]` (transformers); see miras/hf/README.md.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a run folder to a Hugging Face folder or back (needs miras[hf])",
        description="Convert between a `miras train` run folder and a Hugging Face folder that "
        "AutoModelForCausalLM / AutoTokenizer load after `import miras.hf.auto`. The output folder must not exist yet.",
    )
    directions = parser.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
    to_hf = directions.add_parser(
        "to-hf",
        help="run folder -> Hugging Face folder",
        description="Write the run's latest checkpoint (or the given checkpoint folder), its config and its "
        "tokenizer as a Hugging Face folder.",
    )
    to_hf.add_argument("run_dir", metavar="RUN", help="run folder, or one of its checkpoint-NNNNNNN folders")
    to_hf.add_argument("out", metavar="OUT", help="Hugging Face folder to create")
    from_hf = directions.add_parser(
        "from-hf",
        help="Hugging Face folder -> run folder",
        description="Write a Hugging Face folder of a Miras model as a run folder that `miras generate` and "
        "`miras eval` read (optimizer state does not travel: it cannot be resumed).",
    )
    from_hf.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face folder (model_type 'miras')")
    from_hf.add_argument("out", metavar="OUT", help="run folder to create")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from miras.hf.convert import hf_to_run, run_to_hf
    except ImportError as e:
        raise ValueError(f"needs transformers: pip install 'miras[hf]' ({e})") from None

    if args.direction == "to-hf":
        out = run_to_hf(args.run_dir, args.out)
    else:
        out = hf_to_run(args.hf_dir, args.out)
    print(f"wrote {out}")
    return 0
