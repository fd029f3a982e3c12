"""`miras generate`: sample text from a trained run with the model's recurrent cache (constant cost per token)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="sample text from a trained run",
        description="Sample a continuation of --prompt from a trained run (its latest checkpoint, or the given "
        "checkpoint folder). The prompt is prefilled in one parallel pass; each new token costs one recurrent step.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN",
        help="run folder (uses its latest checkpoint) or one of its checkpoint-NNNNNNN folders",
    )
    parser.add_argument(
        "--prompt", default="", help="text to continue (default: none, i.e. the start of a new document)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy (default: 0.8)"
    )
    parser.add_argument(
        "--top-k", type=int, default=50, help="sample among the k most likely tokens; -1: all (default: 50)"
    )
    parser.add_argument("--num-samples", type=int, default=1, help="independent samples to print (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="(default: auto)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from miras.checks import check_int
    from miras.device import resolve_device
    from miras.run.checkpoint import load_trained

    check_int("--max-new-tokens", args.max_new_tokens, low=0)
    check_int("--num-samples", args.num_samples)
    device = resolve_device(args.device)
    model, tokenizer = load_trained(args.checkpoint, device)
    # An empty prompt starts a new document: training data has EOS between documents.
    prompt = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.eos_id]
    generator = torch.Generator(device=device).manual_seed(args.seed)
    input_ids = torch.tensor([prompt] * args.num_samples, device=device)
    ids = model.generate(
        input_ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=None if args.top_k == -1 else args.top_k,
        generator=generator,
    )
    for i, row in enumerate(ids.tolist()):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + tokenizer.decode(row[len(prompt) :]))
    return 0
