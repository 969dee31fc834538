"""The `mole-llama` command: one subcommand per step, each printing where its result is."""

import argparse
import sys
from pathlib import Path

from safetensors import SafetensorError


def parse_expert(text: str) -> tuple:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(
            f"--expert {text!r}: write it as NAME=ADAPTER_DIR, e.g. speech=out/tts-adapter"
        )
    return name, path


def cmd_embedded_base(args) -> None:
    from .conversion.gguf import embedded_base_path

    print(embedded_base_path(args.cache_dir))


def cmd_convert_gguf(args) -> None:
    from .conversion.gguf import convert_gguf

    print(convert_gguf(args.gguf, args.out))


def cmd_build_mole(args) -> None:
    import torch
    from transformers import AutoTokenizer

    from .conversion.peft_experts import build_mole_from_adapters

    experts = dict(args.expert)
    if len(experts) != len(args.expert):
        raise SystemExit("error: each --expert name may appear once")
    router = {"router_hidden_size": args.router_hidden_size, "router_top_k": args.router_top_k}
    model = build_mole_from_adapters(args.base, experts, dtype=getattr(torch, args.dtype), **router)
    model.save_pretrained(args.out)
    # The tokenizer that knows the most tokens (an adapter's, when its expert added tokens) goes with the model.
    tokenizers = []
    for source in [args.base, *experts.values()]:
        try:
            tokenizers.append(AutoTokenizer.from_pretrained(source))
        except (OSError, ValueError):
            continue  # an adapter folder without a tokenizer
    fitting = [t for t in tokenizers if len(t) <= model.config.vocab_size]
    if fitting:
        max(fitting, key=len).save_pretrained(args.out)
    else:
        print("warning: no tokenizer found with the base or the adapters; none saved with the model", file=sys.stderr)
    print(Path(args.out))


def cmd_export_expert(args) -> None:
    from .conversion.peft_experts import export_expert_adapter
    from .modeling import MoLELlamaForCausalLM

    model = MoLELlamaForCausalLM.from_pretrained(args.model)
    print(export_expert_adapter(model, args.expert, args.out))


def cmd_ask(args) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .chat import greedy_chat_reply
    from .conversion.gguf import embedded_base_path

    model_path = args.model or embedded_base_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    if args.routing is not None:
        if not hasattr(model, "set_routing"):
            raise ValueError(f"--routing applies to MoLE-Llama models; {model_path} is a {model.config.model_type}")
        model.set_routing(None if args.routing == "learned" else args.routing)
    reply = greedy_chat_reply(model, tokenizer, args.question, args.max_new_tokens)
    print(tokenizer.decode(reply, skip_special_tokens=True).strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mole-llama", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("embedded-base", help="print (creating it once) the SmolLM2 base model folder")
    command.add_argument("--cache-dir", help="where to keep it (default: $MOLE_LLAMA_CACHE or ~/.cache/mole_llama)")
    command.set_defaults(run=cmd_embedded_base)

    command = commands.add_parser("convert-gguf", help="convert a GGUF Llama checkpoint to a safetensors folder")
    command.add_argument("gguf", help="path of the .gguf file")
    command.add_argument("--out", required=True, help="output folder")
    command.set_defaults(run=cmd_convert_gguf)

    command = commands.add_parser("build-mole", help="build a MoLE-Llama from a base and one PEFT LoRA per expert")
    command.add_argument("--base", required=True, help="base Llama folder the adapters were trained on")
    command.add_argument(
        "--expert", required=True, action="append", type=parse_expert, metavar="NAME=ADAPTER_DIR",
        help="an expert and its PEFT adapter folder; repeat, in gate order (e.g. text=... speech=...)",
    )  # fmt: skip
    command.add_argument("--out", required=True, help="output folder")
    command.add_argument("--router-hidden-size", type=int, default=64)
    command.add_argument("--router-top-k", type=int, default=None)
    command.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    command.set_defaults(run=cmd_build_mole)

    command = commands.add_parser("export-expert", help="write one expert of a MoLE-Llama as a PEFT adapter folder")
    command.add_argument("--model", required=True, help="MoLE-Llama folder")
    command.add_argument("--expert", required=True, help="expert name, e.g. speech")
    command.add_argument("--out", required=True, help="output adapter folder")
    command.set_defaults(run=cmd_export_expert)

    command = commands.add_parser("ask", help="answer a question in text (greedy, through the chat template)")
    command.add_argument("question")
    command.add_argument("-m", "--model", help="model folder (default: the embedded SmolLM2 base)")
    command.add_argument("--routing", help="MoLE only: an expert name, 'base', or 'learned'")
    command.add_argument("--max-new-tokens", type=int, default=64)
    command.set_defaults(run=cmd_ask)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, RuntimeError, OSError, SafetensorError) as error:
        print(f"mole-llama {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
