"""Speaking and answering: `synthesize` (text -> WAV) and `ask` (a text answer, and with `--speak` said aloud)."""

import sys

from .common import check_audio_path, check_voice_file, speak, speaker_of, write_wav


def cmd_synthesize(args) -> None:
    check_audio_path(args.output)
    check_voice_file(args.voice)
    if args.model:
        model_path = args.model
    else:
        from ..embedded import embedded_model_path

        model_path = embedded_model_path("tts-llama")
    speaker = speaker_of(model_path, device="cpu" if args.int8 else None)
    if args.int8:
        from ..conversion.int8 import quantize_llm_int8

        quantize_llm_int8(speaker.model)
    speech = speak(speaker, args.text, args)
    print(write_wav(args.output, speech["audio"], speech["sampling_rate"]))


def cmd_ask(args) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..chat import greedy_chat_reply
    from ..embedded.base import embedded_base_path
    from ..modeling.modeling_mole_llama import check_model_folder

    if not args.question.strip():
        raise ValueError('the question is empty: ask something, e.g. mole-llama ask "What is 2 plus 3?"')
    if args.speak:
        check_audio_path(args.output)
        check_voice_file(getattr(args, "voice", None))
    if args.model:
        model_path = args.model
    elif args.speak:
        from ..embedded import embedded_model_path

        model_path = embedded_model_path("mole-llama")
    else:
        model_path = embedded_base_path()
    if args.speak:  # one load: the speaking model answers in text too
        speaker = speaker_of(model_path)
        model, tokenizer = speaker.model, speaker.tokenizer
    else:
        check_model_folder(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    if args.routing is not None:
        if not hasattr(model, "set_routing"):
            raise ValueError(f"--routing applies to MoLE-Llama models; {model_path} is a {model.config.model_type}")
        model.set_routing(None if args.routing == "learned" else args.routing)
    reply = greedy_chat_reply(model, tokenizer, args.question, args.max_new_tokens)
    answer = tokenizer.decode(reply, skip_special_tokens=True).strip()
    print(answer)
    if args.speak:
        if not answer:
            raise ValueError("the model gave an empty answer: nothing to speak")
        speech = speak(speaker, answer, args)
        print(write_wav(args.output, speech["audio"], speech["sampling_rate"]), file=sys.stderr)


def add_commands(commands) -> None:
    command = commands.add_parser("synthesize", help="text -> WAV with a TTS-Llama or MoLE-Llama folder")
    command.add_argument("text")
    command.add_argument("-m", "--model", help="a speaking model folder or Hub id (default: the shipped TTS-Llama)")
    command.add_argument("-o", "--output", default="speech.wav", help="WAV file to write")
    command.add_argument("--voice", help="reference audio file for the voice (a few seconds)")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--temperature", type=float, help="sample at this temperature (default: the model's)")
    command.add_argument("--speed", type=float, help="speaking rate (1.2 = 20%% faster; a model with durations)")
    command.add_argument("--max-new-tokens", dest="max_new_tokens_speech", type=int,
                         help="cap on the unit tokens per sentence (default: the model's)")  # fmt: skip
    command.add_argument("--int8", action="store_true",
                         help="int8 LLM, faster CPU decoding (a model with a forced expert: a TTS-Llama)")  # fmt: skip
    command.set_defaults(run=cmd_synthesize)

    command = commands.add_parser("ask", help="answer a question in text (greedy, through the chat template)")
    command.add_argument("question")
    command.add_argument(
        "-m", "--model", help="model folder (default: the embedded SmolLM2 base; with --speak the shipped MoLE-Llama)"
    )
    command.add_argument("--routing", help="MoLE only: an expert name, 'base', or 'learned'")
    command.add_argument("--max-new-tokens", type=int, default=64)
    command.add_argument("--speak", action="store_true", help="also say the answer (a speaking MoLE-Llama folder)")
    command.add_argument("-o", "--output", default="answer.wav", help="WAV file for --speak")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--temperature", type=float, help="--speak: sampling temperature (default: the model's)")
    command.add_argument("--max-speech-tokens", dest="max_new_tokens_speech", type=int,
                         help="--speak: cap on the unit tokens per sentence (default: the model's)")  # fmt: skip
    command.set_defaults(run=cmd_ask)
