"""Model folders: the embedded base and shipped models, GGUF conversion, building, merging and exporting experts,
export to a Hub folder and push."""

import sys
from pathlib import Path

from .common import parse_named_folder


def cmd_embedded_base(args) -> None:
    from ..embedded.base import embedded_base_path

    print(embedded_base_path(args.cache_dir))


def cmd_embedded_model(args) -> None:
    from ..embedded import embedded_model_path

    print(embedded_model_path(args.name, args.cache_dir))


def cmd_convert_gguf(args) -> None:
    from ..conversion.gguf import convert_gguf

    print(convert_gguf(args.gguf, args.out))


def cmd_build_mole(args) -> None:
    import torch
    from transformers import AutoTokenizer

    from ..conversion.peft_experts import build_mole_from_adapters

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
    from ..conversion.peft_experts import export_expert_adapter
    from ..modeling import MoLELlamaForCausalLM

    model = MoLELlamaForCausalLM.from_pretrained(args.model)  # checks the folder first
    print(export_expert_adapter(model, args.expert, args.out))


def cmd_merge_expert(args) -> None:
    from ..conversion.merge import merge_speaking_model

    print(merge_speaking_model(args.model, args.out, args.expert))


def cmd_export(args) -> None:
    from ..conversion.hub import export_for_hub

    print(export_for_hub(args.model, args.out, args.repo_id, metrics=args.metrics, training=args.training or ""))


def cmd_push(args) -> None:
    from ..conversion.hub import push_to_hub

    print(push_to_hub(args.repo_dir, args.repo_id, private=not args.public))


def add_commands(commands) -> None:
    command = commands.add_parser("merge-expert", help="fold one expert into the weights of a speaking model")
    command.add_argument("--model", required=True, help="speaking model folder (e.g. tts/model)")
    command.add_argument("--expert", default="speech", help="the expert to merge (default: speech)")
    command.add_argument("--out", required=True, help="output folder: a plain-Llama TTS-Llama, no LoRA at run time")
    command.set_defaults(run=cmd_merge_expert)

    command = commands.add_parser("export", help="a speaking model folder -> a Hub repository folder with its card")
    command.add_argument("--model", required=True, help="speaking model folder (tts/model or the MoLE-Llama)")
    command.add_argument("--out", required=True, help="new folder for the Hub repository")
    command.add_argument("--repo-id", required=True, help="ORG/NAME the card's snippets load")
    command.add_argument("--metrics", help="metrics.json of mole-llama evaluate (goes in the card's model-index)")
    command.add_argument("--training", help="how the model was trained (Markdown for the card)")
    command.set_defaults(run=cmd_export)

    command = commands.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    command.add_argument("repo_dir", help="folder written by mole-llama export")
    command.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    command.add_argument("--public", action="store_true", help="make the repository public (default: private)")
    command.set_defaults(run=cmd_push)

    command = commands.add_parser("embedded-base", help="print (creating it once) the SmolLM2 base model folder")
    command.add_argument("--cache-dir", help="where to keep it (default: $MOLE_LLAMA_CACHE or ~/.cache/mole_llama)")
    command.set_defaults(run=cmd_embedded_base)

    for name in ("tts", "mole"):
        full = f"{name}-llama"
        command = commands.add_parser(f"embedded-{name}", help=f"print (assembling it once) the shipped {full} folder")
        command.add_argument("--cache-dir", help="where to keep it (default: $MOLE_LLAMA_CACHE or ~/.cache/mole_llama)")
        command.set_defaults(run=cmd_embedded_model, name=full)

    command = commands.add_parser("convert-gguf", help="convert a GGUF Llama checkpoint to a safetensors folder")
    command.add_argument("gguf", help="path of the .gguf file")
    command.add_argument("--out", required=True, help="output folder")
    command.set_defaults(run=cmd_convert_gguf)

    command = commands.add_parser("build-mole", help="build a MoLE-Llama from a base and one PEFT LoRA per expert")
    command.add_argument("--base", required=True, help="base Llama folder the adapters were trained on")
    command.add_argument(
        "--expert", required=True, action="append", type=parse_named_folder, metavar="NAME=ADAPTER_DIR",
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
