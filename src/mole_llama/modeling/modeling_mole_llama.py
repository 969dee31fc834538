"""MoLE-Llama: a Llama whose projections carry several LoRA experts, mixed per token by a learned router.

The backbone is transformers' Llama (attention, cache, rotary embeddings, masks are reused as they are). Each
decoder layer gets a small router that reads the layer's input hidden state (with `router_context="sequence"`,
the running mean of its logits over the sequence so far) and gives per-token weights over the experts; the layer's
target projections (`MoLELinear`) add the weighted sum of the experts' LoRA updates.
Everything happens in one forward pass, so generation keeps the KV cache.

This file is copied into saved model folders for `trust_remote_code=True`: it imports nothing from
`mole_llama` but its sibling configuration file.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import OutputRecorder

from .configuration_mole_llama import NO_EXPERT, MoLELlamaConfig
from .float16_weights import Float16Weight, float16_product, in_compiled_step

REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_mole_llama.MoLELlamaConfig",
    "AutoModel": "modeling_mole_llama.MoLELlamaModel",
    "AutoModelForCausalLM": "modeling_mole_llama.MoLELlamaForCausalLM",
}


def check_model_folder(name_or_path) -> None:
    """Refuse, with the fix, what `from_pretrained` would load wrongly or explain badly: a local path that does not
    exist (it would be taken for a Hub id), a folder holding PEFT adapter files beside a full model (transformers
    would apply that adapter on top, or load the adapter's base instead), a cut-short `model.safetensors`.
    A Hub id (`ORG/NAME`, not a local path) passes untouched."""
    text = str(name_or_path)
    folder = Path(text).expanduser()
    if not folder.exists():
        if text.startswith(("/", "./", "../", "~")) or text.count("/") != 1:
            raise OSError(f"no model folder at {text}: give a speaking model folder (train-tts's OUT/tts/model, "
                          "train-router's OUT/mole) or a Hub repo id ORG/NAME")  # fmt: skip
        return
    if not folder.is_dir():
        raise OSError(f"{text} is a file: give the model's folder (the one holding config.json)")
    if (folder / "adapter_config.json").is_file() and (folder / "config.json").is_file():
        raise ValueError(
            f"{text} holds PEFT adapter files (adapter_config.json) beside a full model: transformers would load "
            "that adapter instead of, or on top of, the model. Move them to a folder of their own (to add an "
            "expert, use mole-llama build-mole or merge-expert)"
        )
    weights = folder / "model.safetensors"
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except SafetensorError as error:
            raise OSError(
                f"{weights} is damaged ({error}): it was cut short, e.g. by an interrupted save or copy; "
                "save or copy it again"
            ) from error


INT8_ATTRIBUTE = "int8_quantized"
"""Set on a model by `mole_llama.conversion.int8.quantize_llm_int8`: `save_pretrained` refuses it (the packed
weights are not safetensors)."""


@dataclass
class MoLECausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    expert_weights (`tuple[torch.FloatTensor]`, *optional*, returned with `output_expert_weights=True`):
        One tensor per decoder layer, `(batch, sequence, num_experts)`: the router's weight of each expert for
        each token, in `config.experts` order. Empty when routing is forced with `set_routing`.
    """

    expert_weights: tuple[torch.FloatTensor, ...] | None = None


class MoLELinear(nn.Linear):
    """A projection with named LoRA experts: `W x + sum_e g_e * s_e * B_e A_e dropout(x)`.

    It subclasses `nn.Linear` so that the base weight keeps the key of the plain Llama checkpoint
    (`...q_proj.weight`); the experts live beside it as `lora_A.<name>` / `lora_B.<name>`, the layout and maths
    of PEFT's LoRA. The decoder layer sets `routing` before each call: a `(batch, seq, num_experts)` weight
    tensor from its router, an expert name (only that expert, weight 1), `"base"` (no expert), or `ExpertRows`
    (hard routing: each token's row with its own expert alone).
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool, experts: list, expert_names: list, cache_merged=False,
        float16_decoding=False,
    ):  # fmt: skip
        super().__init__(in_features, out_features, bias=bias)
        self.gate_index = {expert["name"]: expert_names.index(expert["name"]) for expert in experts}
        self.lora_A = nn.ParameterDict({e["name"]: nn.Parameter(torch.empty(e["r"], in_features)) for e in experts})
        self.lora_B = nn.ParameterDict({e["name"]: nn.Parameter(torch.empty(out_features, e["r"])) for e in experts})
        # PEFT's default LoRA init, so a fresh expert changes nothing; applied by `_init_weights`.
        self.lora_A.mole_init = "kaiming_uniform"
        self.lora_B.mole_init = "zeros"
        self.lora_dropout = nn.ModuleDict(
            {e["name"]: nn.Dropout(e["lora_dropout"]) if e["lora_dropout"] > 0 else nn.Identity() for e in experts}
        )
        self.scaling = {
            e["name"]: e["lora_alpha"] / (math.sqrt(e["r"]) if e["use_rslora"] else e["r"]) for e in experts
        }
        self.has_dropout = any(e["lora_dropout"] > 0 for e in experts)
        self.routing = NO_EXPERT
        self.cache_merged = cache_merged
        self.float16_decoding = float16_decoding
        self.compiled_steps = False  # `float16_weights.allow_compiled_steps`
        self.forget_float16_weights()

    def forget_float16_weights(self) -> None:
        # expert name -> (what it was computed from, W + s B A or its Float16Weight); not state: rebuilt when stale
        self._merged = {}

    def expert_update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(self.lora_dropout[name](x), self.lora_A[name]) * self.scaling[name]  # scale the narrow side
        return F.linear(hidden, self.lora_B[name])

    def delta_weight(self, name: str) -> torch.Tensor:
        """Expert `name` as a weight update, `s B A`, in float32 (PEFT's `get_delta_weight`)."""
        return self.scaling[name] * (self.lora_B[name].float() @ self.lora_A[name].float())

    def merged_weight(self, name: str) -> "torch.Tensor | Float16Weight":
        """What a call routed to expert `name` multiplies by: `W + s B A` (`W` for `"base"` or an expert this
        projection lacks), computed on first use and kept until the weight or the expert changes (an in-place change
        bumps a tensor's version, a move to another device or dtype gives the weight new storage). With
        `float16_decoding` on float32 weights it is kept rounded to float16 precision, as a `Float16Weight`.

        Called for every projection of every decoding step (210 per SmolLM2 token), so the parameters are read from
        the modules' own dicts: through `nn.ParameterDict` items and `Module.__getattr__` it took 6.4 us, now 2.5."""
        weight = self._parameters["weight"]
        expert = self.lora_A._parameters.get(name)
        float16 = self.float16_decoding and weight.dtype == torch.float32
        if expert is None and not float16:
            return weight
        if in_compiled_step(self):  # `generate`'s eager prefill kept it fresh; a data pointer cannot be traced
            return self._merged[name][1]
        key = (weight.data_ptr(), weight._version)
        if expert is not None:
            key += (expert._version, self.lora_B._parameters[name]._version)
        cached = self._merged.get(name)
        if cached is None or cached[0] != key:
            merged = weight.float() + self.delta_weight(name) if expert is not None else weight.float()
            kept = Float16Weight(merged, self.compiled_steps) if float16 else merged.to(weight.dtype)
            cached = self._merged[name] = (key, kept)
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = self.routing
        merged = self.cache_merged and not torch.is_grad_enabled() and not (self.training and self.has_dropout)
        if isinstance(routing, str):
            return self.routed_product(routing, x, merged)
        if isinstance(routing, ExpertRows):
            return routing.apply(lambda name, rows: self.routed_product(name, rows, merged), x, self.out_features)
        result = F.linear(x, self.weight, self.bias)
        lora_x = self.lora_input(x)
        if self.training and self.has_dropout:  # each expert needs its own dropout mask, as in PEFT
            update = sum(
                self.expert_update(name, lora_x) * routing[..., index : index + 1].to(lora_x.dtype)
                for name, index in self.gate_index.items()
            )
        else:
            update = self.mixed_update(lora_x, routing)
        return result + update.to(result.dtype)

    def routed_product(self, name: str, x: torch.Tensor, merged: bool) -> torch.Tensor:
        """The projection of `x` with expert `name` alone (`"base"` or an expert this projection lacks: none), by
        the kept merged weight when `merged`, else as LoRA: `W x + s B A x`."""
        bias = self._parameters["bias"]
        if merged:
            weight = self.merged_weight(name)
            if isinstance(weight, Float16Weight):
                return float16_product(self, weight, x, bias)
            return F.linear(x, weight, bias)
        result = F.linear(x, self._parameters["weight"], bias)
        if name not in self.lora_A:
            return result
        return result + self.expert_update(name, self.lora_input(x)).to(result.dtype)

    def lora_input(self, x: torch.Tensor) -> torch.Tensor:
        """`x` in the experts' dtype: as PEFT, experts may be kept in float32 beside a lower-precision base."""
        return x.to(next(iter(self.lora_A.values())).dtype)

    def mixed_update(self, x: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
        """All experts in two matmuls: stack the A's and B's along the rank axis and weigh each expert's rank
        slice by its gate times its scaling (~35% less LoRA time than one pair of matmuls per expert)."""
        weights = torch.cat(
            [
                (routing[..., index : index + 1] * self.scaling[name]).expand(
                    *routing.shape[:-1], self.lora_A[name].shape[0]
                )
                for name, index in self.gate_index.items()
            ],
            dim=-1,
        ).to(x.dtype)
        stacked_A = torch.cat([self.lora_A[name] for name in self.gate_index])
        stacked_B = torch.cat([self.lora_B[name] for name in self.gate_index], dim=1)
        return F.linear(F.linear(x, stacked_A) * weights, stacked_B)


class MoLERouter(nn.Module):
    """Per-token expert weights from a layer's input hidden state: RMSNorm -> Linear -> SiLU -> Linear ->
    (with a `SequenceRoutingContext`, the running mean of those logits over the sequence) -> softmax.

    The output layer starts at zero, so a fresh router weighs all experts equally. With `top_k`, the other experts
    get weight 0 and the kept ones are renormalised; with `top_k=1` the kept expert keeps its softmax probability
    (as in Switch Transformers), so the router still gets a gradient. With `hard_routing`, in eval mode, each token's
    top expert gets weight 1 and the others 0.
    """

    def __init__(self, config: MoLELlamaConfig):
        super().__init__()
        self.top_k = config.router_top_k
        self.temperature = config.router_temperature
        self.hard = config.hard_routing
        self.expert_names = list(config.expert_names)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.proj_in = nn.Linear(config.hidden_size, config.router_hidden_size)
        self.proj_out = nn.Linear(config.router_hidden_size, len(config.experts))
        self.proj_out.mole_init = "zeros"  # equal weights at first; applied by `_init_weights`

    def forward(self, hidden_states: torch.Tensor, context: "SequenceRoutingContext | None" = None) -> torch.Tensor:
        logits = self.context_logits(hidden_states, context)
        if self.hard and not self.training:  # the top expert of the logits is the softmax's: skip the softmax
            return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
        probabilities = (logits.float() / self.temperature).softmax(dim=-1)
        if self.top_k is None or self.top_k >= probabilities.shape[-1]:
            return probabilities
        kept = torch.zeros_like(probabilities, dtype=torch.bool)
        kept.scatter_(-1, probabilities.topk(self.top_k, dim=-1).indices, True)  # exactly k, even on ties
        gates = probabilities * kept
        return gates if self.top_k == 1 else gates / gates.sum(dim=-1, keepdim=True)

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Each token's own expert logits, before any sequence context."""
        return self.proj_out(F.silu(self.proj_in(self.normalize(hidden_states))))

    def context_logits(self, hidden_states: torch.Tensor, context: "SequenceRoutingContext | None") -> torch.Tensor:
        """The logits the routing reads: each token's own, or with a sequence context their running mean."""
        logits = self.logits(hidden_states)
        return logits if context is None else context.running_mean(logits)

    def hard_step_choice(self, hidden_states: torch.Tensor, context: "SequenceRoutingContext | None") -> str:
        """Hard routing of one token of one sequence (a decoding step): the expert `forward`'s one-hot weights
        would pick (the first of tied logits, as theirs), without building them and taking their argmax again."""
        logits = self.logits(hidden_states)
        if context is not None:
            logits = context.step_mean(logits)
        return self.expert_names[int(logits.argmax())]

    def normalize(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`self.norm` (Llama's RMSNorm: float32 statistics, then its weight in the input's dtype) as one fused op
        where the dtypes allow: a third of the router's time in a decoding step, run by every layer."""
        norm = self.norm
        if hidden_states.dtype != torch.float32 or norm.weight.dtype != torch.float32:
            return norm(hidden_states)
        return F.rms_norm(hidden_states, norm.weight.shape, norm.weight, norm.variance_epsilon)

    def hard_routes(self, weights: torch.Tensor) -> "str | ExpertRows | None":
        """Hard routing's one-hot `weights` in the form the projections apply fastest: the expert every token chose
        (a name), else each expert's rows (`ExpertRows`); None for soft routing."""
        if not (self.hard and not self.training):
            return None
        choice = weights.reshape(-1, weights.shape[-1]).argmax(dim=-1)
        if choice.numel() == 1:  # one-token decoding: no comparison needed
            return self.expert_names[int(choice)]
        first = choice[0]
        if bool((choice == first).all()):
            return self.expert_names[int(first)]
        return ExpertRows(choice, self.expert_names)


class ExpertRows:
    """Hard routing of tokens that did not all choose one expert (a prompt's, or a batch's): the flat row indices
    of each expert's tokens, found once per layer, so that each projection multiplies a row once, with its expert
    alone (by the kept merged weight under `merged_expert_cache`), instead of by the base weight plus every
    expert's gated update. A MoLE-Llama's 38-token TTS prompt: 159 -> 105 ms with float16 weights (the
    TTS-Llama's, one expert: 78 ms)."""

    def __init__(self, choice: torch.LongTensor, expert_names: list):
        rows = {name: (choice == index).nonzero().squeeze(-1) for index, name in enumerate(expert_names)}
        self.rows = {name: indices for name, indices in rows.items() if indices.numel()}

    def apply(self, product, x: torch.Tensor, out_features: int) -> torch.Tensor:
        """`product(name, rows)` of each expert's rows of `x (..., in_features)`, put back in place."""
        flat = x.reshape(-1, x.shape[-1])
        parts = {name: product(name, flat.index_select(0, indices)) for name, indices in self.rows.items()}
        first = next(iter(parts.values()))
        result = first.new_empty(flat.shape[0], out_features)
        for name, indices in self.rows.items():
            result.index_copy_(0, indices, parts[name])
        return result.view(*x.shape[:-1], out_features)


class SequenceRoutingContext:
    """`router_context="sequence"`: one layer's router logits, replaced at each position by their mean over the
    sequence's tokens so far (padding left out), starting from the config's prior (`prior_sums`, a float32 tensor:
    the prior's logits times `prior_tokens`, the tokens it counts as).

    The running sums live on the KV cache object (attribute `mole_router_sums`, one entry per layer: float32 sums,
    counts, and the cache length they cover), so each generation step adds its token to the sums of the prompt and
    the tokens before it; a forward without a cache, or with an empty one, starts from its first token. Beam search
    reorders them with the cache (`MoLELlamaForCausalLM._reorder_cache`); a cache cut back (assisted decoding) is
    refused."""

    CACHE_ATTRIBUTE = "mole_router_sums"

    def __init__(
        self, layer_idx: int, token_mask, cache: Cache | None, prior_sums: torch.Tensor | None = None,
        prior_tokens: float = 0.0,
    ):  # fmt: skip
        self.layer_idx = layer_idx
        self.token_mask = token_mask
        self.cache = cache
        self.prior_sums = prior_sums
        self.prior_tokens = prior_tokens

    def step_mean(self, logits: torch.Tensor) -> torch.Tensor:
        """`running_mean` for a decoding step of one sequence: the same numbers in a few ops (the general path takes
        ~15, at every layer of every step), where the token is real and continues its cached sums; else the general
        path, which also raises where the cache cannot be followed."""
        running = self.cache.__dict__.get(self.CACHE_ATTRIBUTE) if self.cache is not None else None
        past = running.get(self.layer_idx) if running else None
        if past is None or past[0].shape[0] != 1 or (self.token_mask is not None and not self.token_mask[0, -1]):
            return self.running_mean(logits)
        past_sums, past_counts, covered = past
        past_length = self.cache.get_seq_length(self.layer_idx)
        if covered != past_length:
            return self.running_mean(logits)
        sums, counts = logits.float() + past_sums, past_counts + 1
        running[self.layer_idx] = (sums.detach(), counts, past_length + 1)
        if self.prior_tokens:
            sums, counts = sums + self.prior_sums, counts + self.prior_tokens
        return (sums / counts).to(logits.dtype)

    def running_mean(self, logits: torch.Tensor) -> torch.Tensor:
        batch, length = logits.shape[:2]
        # float32 whatever the model's dtype: in bf16 a count of 300 no longer grows by one per token
        if self.token_mask is None:
            sums, counts = logits.float(), logits.new_ones(batch, length, 1, dtype=torch.float32)
        else:
            counts = self.token_mask[:, -length:].to(device=logits.device, dtype=torch.float32).unsqueeze(-1)
            sums = logits.float() * counts
        if length > 1:  # a decoding step's single token is its own sum
            sums, counts = sums.cumsum(dim=1), counts.cumsum(dim=1)
        if self.cache is not None:
            running = self.cache.__dict__.setdefault(self.CACHE_ATTRIBUTE, {})
            past_length = self.cache.get_seq_length(self.layer_idx)
            if past_length > 0:  # the cache holds earlier tokens: continue their sums
                if self.layer_idx not in running:
                    raise ValueError(
                        "this KV cache was filled without router_context='sequence' (no running router sums in "
                        "it): start the generation again with this model, from an empty cache"
                    )
                past_sums, past_counts, covered = running[self.layer_idx]
                if past_sums.shape[0] != batch or covered != past_length:
                    raise ValueError(
                        f"the KV cache holds {past_length} tokens of {batch} sequences, its running router sums "
                        f"{covered} of {past_sums.shape[0]}: it was cut back or reshaped (assisted decoding, a "
                        "rollback), which router_context='sequence' cannot follow; generate without it"
                    )
                sums, counts = sums + past_sums, counts + past_counts
            running[self.layer_idx] = (sums[:, -1:].detach(), counts[:, -1:], past_length + length)
        if self.prior_tokens:
            sums, counts = sums + self.prior_sums, counts + self.prior_tokens
        # a left pad (count 0) gets logits 0: equal weights, and it is masked anyway
        return (sums / counts.clamp_min(1)).to(logits.dtype)


class MoLEDecoderLayer(LlamaDecoderLayer):
    """A Llama decoder layer whose target projections are `MoLELinear`, plus its router."""

    def __init__(self, config: MoLELlamaConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.layer_idx = layer_idx
        self.router = MoLERouter(config) if config.experts else None  # none once the experts are merged
        self.router_reads_sequence = config.router_context == "sequence"
        prior = config.router_context_prior
        self.router_prior_logits = [prior[name] for name in config.expert_names] if prior else None
        self.router_prior_tokens = config.router_context_prior_tokens
        self._router_prior_tensors = {}  # device -> the prior's sums as a tensor, made once rather than at every step
        self.routing = config.routing
        for parent in (self.self_attn, self.mlp):
            for proj_name, base in list(parent.named_children()):
                experts = [e for e in config.experts if proj_name in e["target_modules"]]
                if not isinstance(base, nn.Linear) or not experts:
                    continue
                mole = MoLELinear(
                    base.in_features, base.out_features, base.bias is not None, experts, config.expert_names,
                    cache_merged=config.merged_expert_cache, float16_decoding=config.float16_decoding,
                )  # fmt: skip
                setattr(parent, proj_name, mole)

    def _router_prior(self, device) -> torch.Tensor | None:
        if self.router_prior_logits is None:
            return None
        if device not in self._router_prior_tensors:
            with torch.inference_mode(False):  # kept past a speaking call: an ordinary tensor, which autograd can save
                prior = torch.tensor(self.router_prior_logits, dtype=torch.float32, device=device)
                self._router_prior_tensors[device] = self.router_prior_tokens * prior
        return self._router_prior_tensors[device]

    def _routes_one_step_hard(self, hidden_states: torch.Tensor) -> bool:
        """Whether this call routes one token of one sequence by hard routing with no one watching the router's
        weights (transformers' `output_expert_weights` records them with a forward hook)."""
        router = self.router
        watched = router._forward_hooks or router._forward_pre_hooks
        return router.hard and not router.training and hidden_states.shape[:2] == (1, 1) and not watched

    def forward(self, hidden_states: torch.Tensor, *args, router_token_mask=None, **kwargs) -> torch.Tensor:
        """Llama's layer, with its projections routed; `router_token_mask` (the batch's 2-D attention mask, passed
        down by `MoLELlamaModel`) keeps padding out of a sequence router context."""
        if self.routing is not None:
            routing = self.routing
        else:
            context = None
            if self.router_reads_sequence:
                context = SequenceRoutingContext(
                    self.layer_idx, router_token_mask, kwargs.get("cache"), self._router_prior(hidden_states.device),
                    self.router_prior_tokens,
                )  # fmt: skip
            if self._routes_one_step_hard(hidden_states):
                routing = self.router.hard_step_choice(hidden_states, context)
            else:
                routing = self.router(hidden_states, context)
        if not isinstance(routing, str):
            routing = self.router.hard_routes(routing) or routing  # hard routing: each row with its expert alone
        # Looked up on every call (not kept in a list), so replicas made by nn.DataParallel route their own copies;
        # the projections are direct children of the attention and the MLP, and `routing` a plain attribute, so
        # both steps skip nn.Module's slow paths (a recursive walk, __setattr__), which cost ~10% of a decode step.
        projections = [
            module
            for parent in (self.self_attn, self.mlp)
            for module in parent._modules.values()
            if isinstance(module, MoLELinear)
        ]
        for projection in projections:
            projection.__dict__["routing"] = routing
        try:
            return super().forward(hidden_states, *args, **kwargs)
        finally:
            for projection in projections:
                projection.__dict__["routing"] = NO_EXPERT


class MoLELlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = MoLELlamaConfig
    config: MoLELlamaConfig
    _no_split_modules = ["MoLEDecoderLayer"]
    _can_record_outputs = {
        "hidden_states": MoLEDecoderLayer,
        "attentions": LlamaAttention,
        "expert_weights": OutputRecorder(MoLERouter),
    }

    @torch.no_grad()
    def _init_weights(self, module):
        """Llama's init, plus the `mole_init` tags: transformers initialises missing weights module by module and
        skips a module whose direct parameters were all loaded, so the tags sit on the modules owning the tensors."""
        super()._init_weights(module)
        mole_init = getattr(module, "mole_init", None)
        for weight in module.parameters(recurse=False) if mole_init else ():
            if mole_init == "zeros":
                init.zeros_(weight)
            else:
                init.kaiming_uniform_(weight, a=math.sqrt(5))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, after `check_model_folder`."""
        check_model_folder(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual, with an `auto_map` naming every entry point so the folder loads through `AutoConfig`,
        `AutoModel` and `AutoModelForCausalLM` with `trust_remote_code=True` where mole_llama is not installed."""
        if getattr(self, INT8_ATTRIBUTE, False):
            raise ValueError(
                "an int8-quantized model cannot be saved (its packed weights are not safetensors): save the "
                "float32 model, and quantize after loading"
            )
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **REMOTE_CODE_AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def set_routing(self, routing: str | None) -> None:
        """Force one expert for every token (`"speech"`), switch experts off (`"base"`), or go back to the
        learned router (`None`). The choice is stored in `config.routing`, so it is saved with the model."""
        names = self.config.expert_names
        if not names and routing != NO_EXPERT:
            raise ValueError(f"this model's experts were merged into its weights: only '{NO_EXPERT}' routing remains")
        if routing is not None and routing not in names + [NO_EXPERT]:
            raise ValueError(
                f"unknown expert {routing!r}: this model has experts {names}; use one of them, "
                f"'{NO_EXPERT}' for the plain base model, or None for the learned router"
            )
        self.config.routing = routing
        for module in self.modules():
            if isinstance(module, MoLEDecoderLayer):
                module.routing = routing

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search: reorder the KV cache and, with `router_context="sequence"`, its running router sums alike."""
        cache.reorder_cache(beam_idx)
        running = cache.__dict__.get(SequenceRoutingContext.CACHE_ATTRIBUTE, {})
        for layer_idx, (sums, counts, covered) in running.items():
            index = beam_idx.to(sums.device)
            running[layer_idx] = (sums.index_select(0, index), counts.index_select(0, index), covered)
        return cache

    def router_parameters(self) -> list:
        """The routers' parameters: the only ones trained in MoLE stage 2."""
        return [p for m in self.modules() if isinstance(m, MoLERouter) for p in m.parameters()]

    def freeze_all_but_routers(self) -> None:
        """Freeze base and experts, leaving the routers trainable (MoLE stage 2)."""
        router_ids = {id(p) for p in self.router_parameters()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in router_ids)


class MoLELlamaModel(MoLELlamaPreTrainedModel, LlamaModel):
    """The MoLE-Llama backbone (no LM head): Llama's model with `MoLEDecoderLayer`s."""

    def __init__(self, config: MoLELlamaConfig):
        config.check_settings()  # overrides given to from_pretrained reach the config unchecked
        # Build the parts of LlamaModel.__init__ directly, so plain Llama layers are never made and thrown away.
        MoLELlamaPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [MoLEDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, *args, **kwargs):
        """Llama's forward; a 2-D attention mask also goes to the routers (a sequence router context needs it)."""
        if attention_mask is not None and attention_mask.dim() == 2:
            kwargs["router_token_mask"] = attention_mask
        return super().forward(input_ids, attention_mask, *args, **kwargs)


class MoLELlamaForCausalLM(MoLELlamaPreTrainedModel, GenerationMixin):
    """MoLE-Llama with a language-modelling head. Loads a plain Llama checkpoint's weights unchanged
    (the experts and routers come on top), and generates with the KV cache like any causal LM."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MoLELlamaConfig):
        super().__init__(config)
        self.model = MoLELlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_expert_weights: bool | None = None,
        logits_vocabulary: torch.LongTensor | None = None,
        **kwargs,
    ) -> MoLECausalLMOutputWithPast:
        """Llama's causal-LM forward; `output_expert_weights=True` adds the routers' per-token expert weights, and
        `logits_vocabulary` (token ids) scores those tokens alone, the rest -inf (see `vocabulary_logits`)."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_expert_weights=bool(output_expert_weights),
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        if logits_vocabulary is None:
            logits = self.lm_head(hidden_states)
        else:
            logits = self.vocabulary_logits(hidden_states, logits_vocabulary)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return MoLECausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
            expert_weights=outputs.get("expert_weights"),
        )

    def vocabulary_logits(self, hidden_states: torch.Tensor, token_ids: torch.LongTensor) -> torch.Tensor:
        """Full-vocabulary logits in which only `token_ids` are scored and every other token is -inf: decoding
        constrained to a few tokens (speaking: the units and the end marker) skips the rest of the LM head, whose
        49k rows are a sixth of a SmolLM2 decoding step's weight reads (benchmarks/bench_tts.py)."""
        logits = hidden_states.new_full((*hidden_states.shape[:-1], self.config.vocab_size), float("-inf"))
        logits[..., token_ids] = F.linear(hidden_states, self._head_rows(token_ids))
        return logits

    def _head_rows(self, token_ids: torch.LongTensor) -> torch.Tensor:
        weight = self.lm_head.weight
        if not callable(weight):
            return weight[token_ids]
        # An int8 head (conversion.int8) packs its weights, frozen: its rows are unpacked once per set of tokens.
        cached = getattr(self, "_int8_head_rows", None)
        if cached is None or not torch.equal(cached[0], token_ids):
            cached = self._int8_head_rows = (token_ids.clone(), weight().dequantize()[token_ids])
        return cached[1]


# Saving copies this file and its configuration beside the weights (see `save_pretrained` for the auto_map).
MoLELlamaConfig.register_for_auto_class()
MoLELlamaModel.register_for_auto_class("AutoModel")
MoLELlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "check_model_folder",
    "MoLECausalLMOutputWithPast",
    "MoLELinear",
    "MoLERouter",
    "SequenceRoutingContext",
    "MoLEDecoderLayer",
    "MoLELlamaPreTrainedModel",
    "MoLELlamaModel",
    "MoLELlamaForCausalLM",
]
