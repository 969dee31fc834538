"""MoLE-Llama configuration: a Llama config plus named LoRA experts and a per-layer router.

This file is copied into saved model folders for `trust_remote_code=True`: it must import nothing from
`mole_llama`, only from transformers and the standard library.
"""

import dataclasses
import re

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

ALL_LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EXPERT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Names that would shadow attributes of the ParameterDict/ModuleDict holding the experts' weights.
RESERVED_NAMES = {"keys", "values", "items", "get", "pop", "update", "clear", "copy", "forward", "training", "type"}
NO_EXPERT = "base"
"""Routing name that switches every expert off: the model then computes exactly its base Llama."""
ROUTER_CONTEXTS = ("token", "sequence")
"""What a router reads: its token's hidden state alone, or the running mean over the sequence so far."""


@dataclasses.dataclass
class ExpertSpec:
    """One LoRA expert, in the one shape that a MoLE-Llama config stores (`to_dict`), that PEFT trains and saves
    (`to_lora_config`, `from_peft_config`) and that a recipe's `lora:` section sets.

    `lora_alpha` defaults to `2 * r`; `target_modules` to every attention and MLP projection.
    """

    name: str
    r: int = 128
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    use_rslora: bool = False
    target_modules: list | None = None

    def __post_init__(self):
        self.name, self.r = str(self.name), int(self.r)
        self.lora_alpha = float(2 * self.r if self.lora_alpha is None else self.lora_alpha)
        self.lora_dropout, self.use_rslora = float(self.lora_dropout), bool(self.use_rslora)
        self.target_modules = list(self.target_modules or ALL_LLAMA_PROJECTIONS)

    @classmethod
    def from_dict(cls, spec, **defaults) -> "ExpertSpec":
        """From a config's or a recipe's mapping (or a bare name), `defaults` filling what it leaves out; an unknown
        key is an error, not ignored."""
        spec = {"name": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"each expert must be a dict with at least a 'name', got {spec!r}")
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - fields)
        if unknown:
            raise ValueError(f"expert {spec['name']!r}: unknown LoRA setting(s) {unknown}; known: {sorted(fields)}")
        return cls(**{**{k: v for k, v in defaults.items() if v is not None}, **spec})

    @classmethod
    def from_peft_config(cls, name: str, config: dict) -> "ExpertSpec":
        """From a PEFT `adapter_config.json` (as a dict)."""
        return cls(
            name=name, r=config["r"], lora_alpha=config["lora_alpha"], lora_dropout=config.get("lora_dropout") or 0.0,
            use_rslora=bool(config.get("use_rslora")), target_modules=sorted(config["target_modules"]),
        )  # fmt: skip

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_lora_config(self, **settings):
        """PEFT's `LoraConfig` of this expert for a causal LM; `settings` adds others (e.g. trainable_token_indices)."""
        from peft import LoraConfig  # only here: the configuration file must load where PEFT is absent

        return LoraConfig(
            r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, use_rslora=self.use_rslora,
            target_modules=list(self.target_modules), task_type="CAUSAL_LM", **settings,
        )  # fmt: skip


@strict
class MoLELlamaConfig(LlamaConfig):
    r"""
    Configuration of a [`MoLELlamaForCausalLM`]: a Llama backbone whose target projections carry several named
    LoRA experts, mixed per token by a small router in each decoder layer (the MoLE-Llama of arXiv 2410.20336).

    All [`LlamaConfig`] arguments are accepted; the extra ones are:

    Args:
        experts (`list[dict]`, *optional*):
            One dict per expert, in gate order. Keys: `name` (required), `r` (LoRA rank, default `lora_r`),
            `lora_alpha` (default `2 * r`), `lora_dropout` (default 0.0), `use_rslora` (default False, scaling
            `alpha / sqrt(r)` instead of `alpha / r`), `target_modules` (default `target_modules`).
            Defaults to two experts, `text` and `speech`.
        lora_r (`int`, *optional*, defaults to 128):
            Default rank of an expert that does not set `r` (the paper uses 128).
        target_modules (`list[str]`, *optional*):
            Default projections that carry experts; all attention and MLP projections when unset.
        router_hidden_size (`int`, *optional*, defaults to 64):
            Width of the router MLP's hidden layer.
        router_top_k (`int`, *optional*):
            Keep only the `k` largest expert weights per token (renormalised). `None` keeps all (softmax).
        router_temperature (`float`, *optional*, defaults to 1.0):
            Softmax temperature of the router; lower is sharper.
        router_context (`str`, *optional*, defaults to `"token"`):
            What a router reads. `"token"` (the paper's): each token's own hidden state. `"sequence"`: the running
            mean of its router logits over the sequence so far (causal, padding left out), so a token is routed by
            the conversation it belongs to, not by itself alone; a word of a text answer then goes where the whole
            answer goes, even in the first layers, which see little more than the token. Generation carries the
            running sums along with the KV cache (beam search reorders them; assisted decoding, which cuts the
            cache back, is refused).
        router_context_prior (`dict[str, float]`, *optional*):
            With `router_context="sequence"`: logits per expert that the running mean starts from, counted as
            `router_context_prior_tokens` tokens. The first tokens of a chat (the template's `<|im_start|>system`)
            are the same for every task, so no router can tell there; a prior routes them to a chosen expert
            (e.g. `{"text": 3.0, "speech": -3.0}` keeps a conversation's first tokens, the attention sink among
            them, on the text expert) until the sequence's own tokens outweigh it. Unset: no prior.
        router_context_prior_tokens (`float`, *optional*, defaults to 0.0):
            How many tokens the prior counts for (> 0 with a prior, 0 without).
        hard_routing (`bool`, *optional*, defaults to `False`):
            At inference (eval mode) each token takes only its highest-weighted expert, at full weight, instead of
            the soft mixture; where every token of a forward picks the same expert (as in one-token decoding), only
            that expert is computed. Training keeps the soft weights, so the routers still get gradients.
        merged_expert_cache (`bool`, *optional*, defaults to `False`):
            At inference (no gradients), a projection whose tokens all go to one expert (forced routing, or hard
            routing where every token chose it, as in one-token decoding) multiplies once by `W + s B A`, built on
            first use and kept, instead of `W x + s B A x`: base speed, at the memory of one more copy of the
            targeted weights per expert used.
        float16_decoding (`bool`, *optional*, defaults to `False`):
            With `merged_expert_cache`, on float32 weights: the kept weight is rounded to float16 precision, and on a
            CPU every call multiplies by it through FBGEMM's float16-weight GEMM (half the bytes read; rows and sums
            stay float32, so nothing can overflow float16; `float16_weights.py`), elsewhere in float32. Each row's
            product does not depend on the others: a text says the same alone and in a batch. (Compiled decoding
            steps multiply their rows rounded to float16, and check the step's output instead.) Memory-bound CPU
            decoding of SmolLM2-135M ran ~1.9x faster per token here, with the same greedy units
            (benchmarks/bench_tts.py).
        routing (`str`, *optional*):
            `None` uses the learned router; an expert name forces that expert for every token; `"base"` turns all
            experts off. Changed at run time with `set_routing`, and saved with the model.
        base_model_name_or_path (`str`, *optional*):
            Where the base Llama came from, recorded for model cards and for exporting experts back to PEFT.
        base_vocab_size (`int`, *optional*):
            Vocabulary size of that base before any tokens (e.g. speech units) were added.
        num_speech_units (`int`, *optional*):
            Number of semantic unit tokens (`<|speech_0|>`...) in the vocabulary of a model that speaks.
        sampling_rate (`int`, *optional*):
            Rate of the audio a speaking model makes (its codec's); read by the text-to-speech pipeline.
        tts_instruction (`str`, *optional*):
            The instruction that precedes the text in the TTS prompt (the one it was trained with).
    """

    model_type = "mole_llama"

    experts: list | None = None
    lora_r: int = 128
    target_modules: list | None = None
    router_hidden_size: int = 64
    router_top_k: int | None = None
    router_temperature: float = 1.0
    router_context: str = "token"
    router_context_prior: dict | None = None
    router_context_prior_tokens: float | int = 0.0
    hard_routing: bool = False
    merged_expert_cache: bool = False
    float16_decoding: bool = False
    routing: str | None = None
    base_model_name_or_path: str | None = None
    base_vocab_size: int | None = None
    num_speech_units: int | None = None
    sampling_rate: int | None = None
    tts_instruction: str | None = None

    def __post_init__(self, **kwargs):
        if self.target_modules is None:
            self.target_modules = list(ALL_LLAMA_PROJECTIONS)
        if self.experts is None:
            self.experts = [{"name": "text"}, {"name": "speech"}]
        self.experts = [self._complete_expert(spec) for spec in self.experts]
        if self.base_vocab_size is None:
            self.base_vocab_size = self.vocab_size
        self.check_settings()
        super().__post_init__(**kwargs)

    def _complete_expert(self, spec) -> dict:
        return ExpertSpec.from_dict(spec, r=self.lora_r, target_modules=self.target_modules).to_dict()

    def check_settings(self):
        """Raise a plain `ValueError` naming the bad setting (strict's validators would wrap it in their own type).
        Run at construction and again when a model is built, since `from_pretrained(folder, key=value)` sets its
        overrides on the loaded config one by one, past these cross-field checks."""
        names = [expert["name"] for expert in self.experts]
        for name in names:
            if not EXPERT_NAME.fullmatch(name) or name in RESERVED_NAMES:
                raise ValueError(
                    f"expert name {name!r} cannot name a weight: use letters, digits and underscores, starting "
                    f"with a letter, and none of {sorted(RESERVED_NAMES)}"
                )
        if not names and self.routing != NO_EXPERT:
            raise ValueError(
                "experts is empty: give at least one expert, e.g. experts=['text', 'speech'] (a model whose expert "
                f"was merged into its weights has none, and routing='{NO_EXPERT}')"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"expert names must be unique, got {names}")
        if NO_EXPERT in names:
            raise ValueError(f"'{NO_EXPERT}' is reserved for 'no expert' routing: rename that expert")
        for expert in self.experts:
            if expert["r"] <= 0:
                raise ValueError(f"expert '{expert['name']}' has rank r={expert['r']}: use a positive rank")
            unknown = set(expert["target_modules"]) - set(ALL_LLAMA_PROJECTIONS)
            if unknown:
                raise ValueError(
                    f"expert '{expert['name']}' targets {sorted(unknown)}, which a Llama layer does not have; "
                    f"choose from {ALL_LLAMA_PROJECTIONS}"
                )
        if self.router_top_k is not None and not 1 <= self.router_top_k <= len(names):
            raise ValueError(f"router_top_k={self.router_top_k} must lie between 1 and the {len(names)} experts")
        if self.router_temperature <= 0:
            raise ValueError(f"router_temperature={self.router_temperature} must be positive")
        if self.router_context not in ROUTER_CONTEXTS:
            raise ValueError(f"router_context={self.router_context!r}: choose one of {list(ROUTER_CONTEXTS)}")
        prior, prior_tokens = self.router_context_prior, self.router_context_prior_tokens
        numbers = isinstance(prior, dict) and all(
            isinstance(value, (int, float)) and not isinstance(value, bool) for value in prior.values()
        )
        if prior is not None and (not numbers or set(prior) != set(names)):
            raise ValueError(
                f"router_context_prior={prior!r} must give one logit (a number) per expert, e.g. "
                f"{ {name: 0.0 for name in names} }"
            )
        if (prior is None) != (prior_tokens == 0) or prior_tokens < 0:
            raise ValueError(
                f"router_context_prior={prior!r} with router_context_prior_tokens={prior_tokens}: give both (a "
                "prior and how many tokens it counts for, > 0) or neither"
            )
        if (prior is not None or prior_tokens) and self.router_context != "sequence":
            raise ValueError(
                "router_context_prior and router_context_prior_tokens shape the running mean of "
                "router_context='sequence': set router_context='sequence' too, or leave them unset"
            )
        if self.float16_decoding and not self.merged_expert_cache:
            raise ValueError(
                "float16_decoding keeps a float16 copy of the merged weights: set merged_expert_cache=True too"
            )
        if self.routing is not None and self.routing not in names + [NO_EXPERT]:
            raise ValueError(
                f"routing={self.routing!r} is not an expert of this model: use one of {names}, "
                f"'{NO_EXPERT}' for no expert, or None for the learned router"
            )

    @property
    def expert_names(self) -> list:
        return [expert["name"] for expert in self.experts]


__all__ = ["ALL_LLAMA_PROJECTIONS", "ExpertSpec", "MoLELlamaConfig", "NO_EXPERT", "ROUTER_CONTEXTS"]
