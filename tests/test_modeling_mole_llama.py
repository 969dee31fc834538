"""MoLE-Llama on tiny random configs: equivalence with PEFT and the base, routing, cache, training, errors."""

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
)

from conftest import NEW_TOKENS, TINY_LLAMA
from mole_llama import NO_EXPERT, MoLELlamaConfig, MoLELlamaForCausalLM, MoLELlamaModel
from mole_llama.conversion.peft_experts import mole_config_from_base
from mole_llama.modeling.float16_weights import Float16Weight, fbgemm_engine
from mole_llama.modeling.modeling_mole_llama import ExpertRows, MoLELinear, MoLERouter, SequenceRoutingContext


def random_ids(vocab, shape=(2, 11), seed=0):
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def mole(tiny_mole_dir):
    return MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir).eval()


def peft_model(base_dir, adapter_dir, vocab_size=None):
    base = LlamaForCausalLM.from_pretrained(base_dir)
    if vocab_size:
        base.resize_token_embeddings(vocab_size, mean_resizing=False)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


@torch.no_grad()
def test_forced_expert_equals_peft_adapter(mole, tiny_base_dir, text_adapter_dir, speech_adapter_dir):
    vocab = TINY_LLAMA["vocab_size"]
    ids = random_ids(vocab + NEW_TOKENS)
    mole.set_routing("speech")
    reference = peft_model(tiny_base_dir, speech_adapter_dir, vocab + NEW_TOKENS)(ids).logits
    assert (mole(ids).logits - reference).abs().max() < 1e-4

    # The text adapter was trained on the original vocabulary: compare on its tokens and logits.
    text_ids = random_ids(vocab, seed=1)
    mole.set_routing("text")
    reference = peft_model(tiny_base_dir, text_adapter_dir)(text_ids).logits
    assert (mole(text_ids).logits[..., :vocab] - reference).abs().max() < 1e-4
    mole.set_routing(None)


@torch.no_grad()
def test_no_expert_routing_equals_base(mole, tiny_base_dir):
    ids = random_ids(TINY_LLAMA["vocab_size"])
    base = LlamaForCausalLM.from_pretrained(tiny_base_dir).eval()
    mole.set_routing(NO_EXPERT)
    assert (mole(ids).logits[..., : base.config.vocab_size] - base(ids).logits).abs().max() < 1e-5
    mole.set_routing(None)


@torch.no_grad()
def test_learned_routing_mixes_experts_and_reports_weights(mole):
    ids = random_ids(mole.config.vocab_size)
    mole.set_routing(None)
    out = mole(ids, output_expert_weights=True)
    assert len(out.expert_weights) == mole.config.num_hidden_layers
    weights = out.expert_weights[0]
    assert weights.shape == (*ids.shape, 2)
    torch.testing.assert_close(weights.sum(-1), torch.ones(ids.shape))
    assert weights.std() > 0.01, "a random router should weigh tokens differently"
    logits = {}
    for routing in ("text", "speech", None):
        mole.set_routing(routing)
        logits[routing] = mole(ids).logits
    mole.set_routing(None)
    assert not torch.allclose(logits[None], logits["text"]) and not torch.allclose(logits[None], logits["speech"])
    assert mole(ids).expert_weights is None


def test_top_k_keeps_exactly_k_experts_and_trains_the_router(tiny_mole_dir):
    top1 = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, router_top_k=1)
    ids = random_ids(top1.config.vocab_size)
    out = top1(ids, labels=ids, output_expert_weights=True)
    weights = out.expert_weights[0]
    assert ((weights > 0).sum(-1) == 1).all()
    assert (weights.max(-1).values >= 0.5).all(), "the kept expert keeps its softmax probability"
    out.loss.backward()
    assert top1.model.layers[0].router.proj_out.weight.grad.abs().sum() > 0

    config = MoLELlamaConfig(**TINY_LLAMA, experts=["a", "b", "c"], lora_r=4, router_top_k=2)
    fresh = MoLELlamaForCausalLM(config).eval()  # zero router: all experts tie
    with torch.no_grad():
        weights = fresh(random_ids(TINY_LLAMA["vocab_size"]), output_expert_weights=True).expert_weights[0]
    assert ((weights > 0).sum(-1) == 2).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@torch.no_grad()
def test_temperature_sharpens_the_gates(tiny_mole_dir):
    ids = random_ids(96)
    sharp = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, router_temperature=0.1).eval()
    soft = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, router_temperature=10.0).eval()
    sharp_max = sharp(ids, output_expert_weights=True).expert_weights[0].max(-1).values.mean()
    soft_max = soft(ids, output_expert_weights=True).expert_weights[0].max(-1).values.mean()
    assert sharp_max > soft_max


@torch.no_grad()
def test_greedy_generation_with_cache_equals_without(mole):
    ids = random_ids(mole.config.vocab_size, shape=(1, 6))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with_cache = mole.generate(ids, use_cache=True, **kwargs)
    without_cache = mole.generate(ids, use_cache=False, **kwargs)
    assert with_cache.shape[1] > ids.shape[1]
    assert torch.equal(with_cache, without_cache)


@torch.no_grad()
def test_a_logits_vocabulary_scores_its_tokens_alone_and_generates_as_masking_the_full_head(mole):
    ids = random_ids(mole.config.vocab_size, shape=(2, 6))
    allowed = torch.tensor([5, 17, 40, mole.config.vocab_size - 1])
    full = mole(ids).logits
    sliced = mole(ids, logits_vocabulary=allowed).logits
    assert sliced.shape == full.shape
    assert torch.allclose(sliced[..., allowed], full[..., allowed], atol=1e-5)
    others = torch.ones(mole.config.vocab_size, dtype=torch.bool)
    others[allowed] = False
    assert torch.isneginf(sliced[..., others]).all()

    class OnlyAllowed(LogitsProcessor):  # what constrained decoding does with the full head
        def __call__(self, input_ids, scores):
            return scores.masked_fill(others, float("-inf"))

    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    masked = mole.generate(ids, logits_processor=LogitsProcessorList([OnlyAllowed()]), **kwargs)
    assert torch.equal(mole.generate(ids, logits_vocabulary=allowed, **kwargs), masked)
    assert torch.isin(masked[:, ids.shape[1] :], allowed).all()


def test_router_only_training_gets_gradients_only_on_routers(tiny_mole_dir):
    model = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir)
    model.freeze_all_but_routers()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = random_ids(model.config.vocab_size)
    model(ids, labels=ids).loss.backward()
    router_ids = {id(p) for p in model.router_parameters()}
    assert router_ids
    for name, parameter in model.named_parameters():
        if id(parameter) in router_ids:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_gradient_checkpointing_gives_the_same_gradients(tiny_mole_dir):
    grads = []
    for checkpointing in (False, True):
        model = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ids = random_ids(model.config.vocab_size)
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@pytest.mark.parametrize("construction", ["from_pretrained", "constructor"])
def test_fresh_experts_leave_the_base_unchanged(tiny_base_dir, construction):
    base = LlamaForCausalLM.from_pretrained(tiny_base_dir).eval()
    config = mole_config_from_base(base.config, [{"name": "text", "r": 4}, {"name": "speech", "r": 4}])
    if construction == "from_pretrained":  # missing expert and router weights are initialised by transformers
        model = MoLELlamaForCausalLM.from_pretrained(tiny_base_dir, config=config).eval()
    else:
        model = MoLELlamaForCausalLM(config).eval()
        model.load_state_dict(base.state_dict(), strict=False)
    projection = model.model.layers[0].self_attn.q_proj
    assert torch.isfinite(projection.lora_A["text"]).all() and projection.lora_A["text"].abs().sum() > 0
    assert (projection.lora_B["text"] == 0).all()
    ids = random_ids(TINY_LLAMA["vocab_size"])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits)
        gates = model(ids, output_expert_weights=True).expert_weights[0]
    torch.testing.assert_close(gates, torch.full_like(gates, 0.5))


def test_auto_classes_load_with_the_package_imported(tiny_mole_dir, mole):
    assert isinstance(AutoConfig.from_pretrained(tiny_mole_dir), MoLELlamaConfig)
    assert isinstance(AutoModel.from_pretrained(tiny_mole_dir), MoLELlamaModel)
    causal = AutoModelForCausalLM.from_pretrained(tiny_mole_dir).eval()
    ids = random_ids(mole.config.vocab_size)
    mole.set_routing(None)
    with torch.no_grad():
        torch.testing.assert_close(causal(ids).logits, mole(ids).logits)


def test_routing_is_saved_with_the_model(tiny_mole_dir, tmp_path):
    model = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir)
    model.set_routing("speech")
    model.save_pretrained(tmp_path)
    reloaded = MoLELlamaForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.routing == "speech"
    assert all(layer.routing == "speech" for layer in reloaded.model.layers)


def test_unknown_expert_names_are_refused(mole):
    with pytest.raises(ValueError, match="unknown expert 'music'.*\\['text', 'speech'\\]"):
        mole.set_routing("music")
    with pytest.raises(ValueError, match="must be unique"):
        MoLELlamaConfig(**TINY_LLAMA, experts=["text", "text"])
    with pytest.raises(ValueError, match="reserved"):
        MoLELlamaConfig(**TINY_LLAMA, experts=["text", NO_EXPERT])
    with pytest.raises(ValueError, match="routing='music'"):
        MoLELlamaConfig(**TINY_LLAMA, experts=["text"], routing="music")
    with pytest.raises(ValueError, match="does not have"):
        MoLELlamaConfig(**TINY_LLAMA, experts=[{"name": "text", "target_modules": ["qkv"]}])
    for bad_name in ("a.b", "", "keys", "9lives"):
        with pytest.raises(ValueError, match="cannot name a weight"):
            MoLELlamaConfig(**TINY_LLAMA, experts=[bad_name])
    with pytest.raises(ValueError, match="router_top_k=3"):
        MoLELlamaConfig(**TINY_LLAMA, experts=["text", "speech"], router_top_k=3)


def test_missing_or_corrupt_weights_file_is_a_clear_error(tiny_mole_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_mole_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(Exception, match="(?i)safetensors|header"):
        MoLELlamaForCausalLM.from_pretrained(folder)
    weights.unlink()
    with pytest.raises(OSError, match="model.safetensors|does not appear to have"):
        MoLELlamaForCausalLM.from_pretrained(folder)


def test_mixed_update_matches_the_per_expert_lora_sum():
    experts = [
        {"name": "text", "r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "use_rslora": False},
        {"name": "speech", "r": 6, "lora_alpha": 3.0, "lora_dropout": 0.0, "use_rslora": True},
    ]
    torch.manual_seed(0)
    layer = MoLELinear(16, 24, bias=True, experts=experts, expert_names=["text", "speech"])
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter)
    x = torch.randn(2, 5, 16)
    gates = torch.rand(2, 5, 2).softmax(-1)
    layer.routing = gates
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
    for index, (name, scale) in enumerate([("text", 8.0 / 4), ("speech", 3.0 / 6**0.5)]):  # rsLoRA: alpha/sqrt(r)
        expected = expected + (x @ layer.lora_A[name].T @ layer.lora_B[name].T) * scale * gates[..., index : index + 1]
    torch.testing.assert_close(layer(x), expected)


@torch.no_grad()
def test_left_padded_batch_generates_like_each_prompt_alone(mole):
    mole.set_routing(None)
    prompts = [[5, 9, 14, 20, 33, 41], [7, 11, 12]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    batched = mole.generate(ids, attention_mask=mask, **kwargs)[:, width:]
    for row, prompt in enumerate(prompts):
        alone = mole.generate(torch.tensor([prompt]), **kwargs)[0, len(prompt) :]
        assert torch.equal(batched[row], alone), row


@torch.no_grad()
def test_bfloat16_model_and_float32_experts_run(tiny_mole_dir):
    model = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, dtype=torch.bfloat16).eval()
    ids = random_ids(model.config.vocab_size)
    reference = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir).eval()(ids).logits
    logits = model(ids).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - reference).abs().max() < 0.1 * reference.abs().max()
    for name, parameter in model.named_parameters():  # experts kept in float32 on a bf16 base, as PEFT allows
        if ".lora_" in name:
            parameter.data = parameter.data.float()
    assert model(ids).logits.dtype == torch.bfloat16


@torch.no_grad()
def test_past_key_values_keyword_still_works(mole):
    ids = random_ids(mole.config.vocab_size, shape=(1, 8))
    full = mole(ids).logits[:, -1]
    prefix = mole(ids[:, :-1], use_cache=True)
    step = mole(ids[:, -1:], past_key_values=prefix.cache).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-4)


def test_transformers_trainer_trains_only_the_routers(tiny_mole_dir, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir)
    model.freeze_all_but_routers()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rows = [random_ids(model.config.vocab_size, shape=(1, 12), seed=seed)[0].tolist() for seed in range(16)]
    dataset = Dataset.from_dict({"input_ids": rows, "labels": rows})
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2,
        report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=dataset).train()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".router." in name for name in changed)


@pytest.mark.slow
def test_trl_sft_trainer_trains_only_the_routers_on_chat_data(tmp_path):
    """MoLE stage 2 through TRL: chat-formatted data, the real SmolLM2 tokenizer and chat template, a tiny model."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from mole_llama.embedded.base import embedded_base_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_base_path())
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    config = MoLELlamaConfig(
        **{**TINY_LLAMA, **special, "vocab_size": len(tokenizer)}, experts=["text", "speech"], lora_r=4
    )
    torch.manual_seed(0)
    model = MoLELlamaForCausalLM(config)
    with torch.no_grad():  # trained-looking experts, so that the routing matters to the loss
        for name, parameter in model.named_parameters():
            if ".lora_" in name:
                parameter.normal_(0, 0.5)
    model.freeze_all_but_routers()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    messages = [
        [{"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": str(a + b)}]
        for a in range(4)
        for b in range(4)
    ]
    args = SFTConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=8, learning_rate=5e-2, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=1,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"messages": messages}), processing_class=tokenizer
    )
    trainer.train()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".router." in name for name in changed)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-2:]) < sum(losses[:2])


def _lean_to(model, expert: str, logit: float) -> None:
    """Bias every router towards `expert` (softmax weight ~0.8 at logit 1.4 with two experts)."""
    index = model.config.expert_names.index(expert)
    for layer in model.model.layers:
        torch.nn.init.zeros_(layer.router.proj_out.weight)
        torch.nn.init.zeros_(layer.router.proj_out.bias)
        layer.router.proj_out.bias.data[index] = logit


@torch.no_grad()
def test_hard_routing_gives_each_token_its_top_expert_at_full_weight(tiny_mole_dir, tmp_path):
    hard = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, hard_routing=True).eval()
    soft = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir).eval()
    for model in (hard, soft):
        _lean_to(model, "speech", 1.4)
    ids = random_ids(hard.config.vocab_size)
    weights = hard(ids, output_expert_weights=True).expert_weights[0]
    assert torch.equal(weights, torch.nn.functional.one_hot(weights.argmax(-1), 2).float())
    soft_weights = soft(ids, output_expert_weights=True).expert_weights[0]
    assert 0.7 < float(soft_weights[..., 1].mean()) < 0.9
    soft.set_routing("speech")
    forced = soft(ids).logits
    soft.set_routing(None)
    torch.testing.assert_close(hard(ids).logits, forced, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(soft(ids).logits, forced, atol=1e-4)
    hard.train()  # training keeps the soft weights, so the routers get a gradient
    assert torch.allclose(hard(ids, output_expert_weights=True).expert_weights[0], soft_weights)
    hard.eval()
    hard.save_pretrained(tmp_path / "hard")
    assert MoLELlamaForCausalLM.from_pretrained(tmp_path / "hard").config.hard_routing is True


@torch.no_grad()
def test_hard_routing_fast_path_equals_the_general_path(mole, tiny_mole_dir, monkeypatch):
    hard = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, hard_routing=True).eval()
    ids = random_ids(hard.config.vocab_size, shape=(1, 7))
    routers = [layer.router for layer in hard.model.layers]
    chosen = [router.hard_routes(hard(ids[:, :1], output_expert_weights=True).expert_weights[i])
              for i, router in enumerate(routers)]  # fmt: skip
    assert all(name in hard.config.expert_names for name in chosen), "one token: one expert per layer"
    fast = hard.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    fast_logits = hard(ids).logits
    for router in routers:
        monkeypatch.setattr(router, "hard_routes", lambda weights: None)  # always the one-hot mixed path
    torch.testing.assert_close(hard(ids).logits, fast_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(hard.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0), fast)


@torch.no_grad()
@pytest.mark.parametrize(
    "kept", [{}, {"merged_expert_cache": True}, {"merged_expert_cache": True, "float16_decoding": True}]
)
def test_tokens_routed_to_different_experts_each_take_their_expert_alone(tiny_mole_dir, monkeypatch, kept):
    """A prompt whose tokens choose different experts (hard routing) multiplies each token's row once, with its
    expert alone (`ExpertRows`; by the kept merged weight with the cache), as the one-hot gated mixture does."""
    model = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, hard_routing=True, **kept).eval()
    _scramble_routers(model, seed=3)
    ids = random_ids(model.config.vocab_size, shape=(2, 9))
    routes = [layer.router.hard_routes(weights) for layer, weights in
              zip(model.model.layers, model(ids, output_expert_weights=True).expert_weights)]  # fmt: skip
    assert any(isinstance(route, ExpertRows) and len(route.rows) == 2 for route in routes)
    rows = model(ids).logits
    for layer in model.model.layers:
        monkeypatch.setattr(layer.router, "hard_routes", lambda weights: None)  # the one-hot gated mixture
    tolerance = 2e-2 if kept.get("float16_decoding") else 1e-5  # float16: the merged weights are rounded
    torch.testing.assert_close(rows, model(ids).logits, atol=tolerance, rtol=tolerance)


@torch.no_grad()
def test_merged_expert_cache_gives_the_same_outputs_and_follows_weight_changes(tiny_mole_dir):
    plain = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, hard_routing=True).eval()
    cached = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, hard_routing=True, merged_expert_cache=True).eval()
    ids = random_ids(plain.config.vocab_size, shape=(1, 7))
    assert torch.equal(
        cached.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0),
        plain.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0),
    )  # hard routing, one token a step: every decoding step takes the cached merged weights
    projections = [module for module in cached.modules() if isinstance(module, MoLELinear)]
    assert any(module._merged for module in projections)
    for routing in ("speech", "text"):
        for model in (plain, cached):
            model.set_routing(routing)
        torch.testing.assert_close(cached(ids).logits, plain(ids).logits, atol=1e-5, rtol=1e-5)
    for model in (plain, cached):  # an expert changed in place (as training or load_state_dict do): no stale cache
        for module in model.modules():
            if isinstance(module, MoLELinear):
                module.lora_B["text"].mul_(3.0)
    torch.testing.assert_close(cached(ids).logits, plain(ids).logits, atol=1e-5, rtol=1e-5)
    with torch.enable_grad():  # with gradients on, the experts are applied as LoRA, so they still train
        cached.train()
        cached(ids).logits.sum().backward()
    assert all(module.lora_B["text"].grad is not None for module in projections)
    assert MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, merged_expert_cache=True).config.merged_expert_cache


@torch.no_grad()
def test_float16_decoding_multiplies_by_the_merged_weight_rounded_to_float16_alike_alone_and_batched(tiny_mole_dir):
    with pytest.raises(ValueError, match="merged_expert_cache=True"):
        MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, float16_decoding=True)
    plain = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, merged_expert_cache=True).eval()
    half = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, merged_expert_cache=True, float16_decoding=True).eval()
    for model in (plain, half):
        model.set_routing("speech")
    ids = random_ids(plain.config.vocab_size, shape=(1, 7))
    steps = half.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(steps, plain.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0))
    projection = half.model.layers[0].self_attn.q_proj
    exact = plain.model.layers[0].self_attn.q_proj.merged_weight("speech")
    kept = projection.merged_weight("speech")
    assert isinstance(kept, Float16Weight) and (kept.packed is not None) == fbgemm_engine()  # FBGEMM's packed copy
    projection.routing = "speech"  # as its layer sets it before each call
    x = torch.randn(1, 1, projection.in_features)
    torch.testing.assert_close(projection(x), F.linear(x, exact.half().float()), atol=1e-5, rtol=1e-5)
    assert torch.equal(projection(x), projection(x.expand(3, 1, -1))[:1])  # alone = in a batch, to the bit
    with pytest.MonkeyPatch.context() as patch:  # the rows stay float32: an activation past float16's range is fine
        patch.setattr(projection, "_merged", {})
        projection.weight.data.fill_(1.0)
        projection.lora_B["speech"].data.zero_()
        big = torch.full((1, 1, projection.in_features), 5e4)
        torch.testing.assert_close(projection(big), big.sum(-1, keepdim=True).expand(1, 1, projection.out_features))


def _scramble_routers(model, seed: int) -> None:
    """Trained-looking routers: logits that depend on the token (a fresh router's output layer is zero)."""
    for layer in model.model.layers:
        torch.nn.init.normal_(layer.router.proj_out.weight, std=0.5, generator=torch.Generator().manual_seed(seed))


def _per_token_router_logits(model, ids, mask=None) -> list:
    """Each layer's router logits from that layer's own input hidden states, token by token (no context)."""
    hidden = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    return [layer.router.proj_out(torch.nn.functional.silu(layer.router.proj_in(layer.router.norm(h))))
            for layer, h in zip(model.model.layers, hidden)]  # fmt: skip


@torch.no_grad()
def test_sequence_router_context_routes_each_token_by_the_running_mean_of_its_sequence(tiny_mole_dir):
    model = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, router_context="sequence").eval()
    _scramble_routers(model, seed=3)
    ids = random_ids(model.config.vocab_size, shape=(2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row: its pads count for nothing
    weights = model(ids, attention_mask=mask, output_expert_weights=True).expert_weights
    for layer_weights, logits in zip(weights, _per_token_router_logits(model, ids, mask)):
        valid = mask.unsqueeze(-1).float()
        running = (logits * valid).cumsum(1) / valid.cumsum(1).clamp_min(1)
        torch.testing.assert_close(layer_weights[mask.bool()], running.softmax(-1)[mask.bool()])
    token = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir).eval()
    token.load_state_dict(model.state_dict())
    assert not torch.allclose(token(ids, attention_mask=mask, output_expert_weights=True).expert_weights[0], weights[0])


@torch.no_grad()
@pytest.mark.parametrize("hard", [False, True])
def test_sequence_router_context_generates_with_the_cache_as_without(tiny_mole_dir, hard):
    model = MoLELlamaForCausalLM.from_pretrained(
        tiny_mole_dir, router_context="sequence", hard_routing=hard, merged_expert_cache=hard
    ).eval()
    _scramble_routers(model, seed=4)
    prompts = [[5, 9, 14, 20, 33, 41], [7, 11, 12]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    generated = model.generate(ids, attention_mask=mask, **kwargs)
    steps = torch.stack(generated.logits, dim=1)  # each step's logits, computed with the KV cache
    full_mask = torch.cat([mask, torch.ones_like(generated.sequences[:, width:])], dim=1)
    full = model(generated.sequences, attention_mask=full_mask, use_cache=False).logits  # the whole text at once
    torch.testing.assert_close(steps, full[:, width - 1 : -1], atol=1e-4, rtol=1e-4)
    for row, prompt in enumerate(prompts):  # padding left out of the sums: each row as if alone
        alone = model.generate(torch.tensor([prompt]), **kwargs)
        torch.testing.assert_close(torch.stack(alone.logits, dim=1)[0], steps[row], atol=1e-4, rtol=1e-4)
    saved = tiny_mole_dir.parent / f"sequence_{hard}"
    model.save_pretrained(saved)
    assert MoLELlamaForCausalLM.from_pretrained(saved).config.router_context == "sequence"


@torch.no_grad()
def test_a_hard_decoding_step_picks_the_expert_of_the_routers_weights(tiny_mole_dir, monkeypatch):
    """One token of one sequence skips the one-hot weights (`MoLERouter.hard_step_choice`, the top of the running
    sums): the same experts, so the same tokens, as the router's forward, which a forward hook (transformers' output
    recording) still gets."""
    model = MoLELlamaForCausalLM.from_pretrained(
        tiny_mole_dir, router_context="sequence", hard_routing=True, merged_expert_cache=True,
        router_context_prior={"text": 2.0, "speech": -2.0}, router_context_prior_tokens=4.0,
    ).eval()  # fmt: skip
    _lean_to(model, "speech", 4.0)  # each token says speech by 4, the prior text by 2 for 4 tokens: text, then speech
    ids = random_ids(model.config.vocab_size, shape=(1, 2))
    choices, general_means = [], []
    choose, running_mean = MoLERouter.hard_step_choice, SequenceRoutingContext.running_mean
    monkeypatch.setattr(MoLERouter, "hard_step_choice", lambda *args: choices.append(choose(*args)) or choices[-1])
    counted_mean = lambda *args: general_means.append(1) or running_mean(*args)  # noqa: E731
    monkeypatch.setattr(SequenceRoutingContext, "running_mean", counted_mean)
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    fast = model.generate(ids, **kwargs)
    assert len(choices) == 11 * model.config.num_hidden_layers and len(set(choices)) == 2  # both experts chosen
    assert len(general_means) == model.config.num_hidden_layers  # the prompt's; each step's sums in a few ops
    for layer in model.model.layers:
        layer.router.register_forward_hook(lambda module, args, output: None)
    choices.clear()
    general = model.generate(ids, **kwargs)
    assert not choices and torch.equal(general.sequences, fast.sequences)
    torch.testing.assert_close(torch.stack(general.logits), torch.stack(fast.logits))


@torch.no_grad()
def test_sequence_router_context_prior_routes_the_first_tokens_until_the_sequence_outweighs_it(tiny_mole_dir):
    model = MoLELlamaForCausalLM.from_pretrained(
        tiny_mole_dir, router_context="sequence", router_context_prior={"text": 2.0, "speech": -2.0},
        router_context_prior_tokens=4.0,
    ).eval()  # fmt: skip
    _lean_to(model, "speech", 4.0)  # every token's own logits: text 0, speech 4
    ids = random_ids(model.config.vocab_size, shape=(1, 12))
    speech_share = model(ids, output_expert_weights=True).expert_weights[0][0, :, 1]
    # running mean after t tokens: speech - text logit = (4 t - 4 * 4) / (t + 4): text until t = 4, speech after
    expected = torch.tensor([(4.0 * t - 16.0) / (t + 4.0) for t in range(1, 13)]).sigmoid()
    torch.testing.assert_close(speech_share, expected)
    generated = model.generate(ids[:, :2], max_new_tokens=6, do_sample=False, pad_token_id=0, use_cache=True)
    assert torch.equal(generated, model.generate(ids[:, :2], max_new_tokens=6, do_sample=False, pad_token_id=0,
                                                 use_cache=False))  # fmt: skip
    for prior, tokens, message in (
        ({"text": 1.0}, 2, "one logit"),
        ({"text": "a", "speech": 0}, 2, "one logit"),
        ({"text": 1.0, "speech": -1.0}, 0, "give both"),
        (None, 2, "give both"),
    ):
        with pytest.raises(ValueError, match=message):
            MoLELlamaConfig(router_context="sequence", router_context_prior=prior, router_context_prior_tokens=tokens)
    from mole_llama.conversion.merge import merge_expert

    merged = merge_expert(model, "speech")  # no experts left: no router settings either
    assert merged.config.router_context == "token" and merged.config.router_context_prior is None
    with pytest.raises(ValueError, match="set router_context='sequence' too"):
        MoLELlamaConfig(router_context_prior={"text": 1.0, "speech": -1.0}, router_context_prior_tokens=2.0)


@torch.no_grad()
def test_sequence_router_context_follows_beam_search_and_refuses_a_cut_back_cache(tiny_mole_dir):
    model = MoLELlamaForCausalLM.from_pretrained(
        tiny_mole_dir, router_context="sequence", router_context_prior={"text": 1.0, "speech": -1.0},
        router_context_prior_tokens=2,
    ).eval()  # fmt: skip
    _scramble_routers(model, seed=5)
    ids = random_ids(model.config.vocab_size, shape=(2, 6))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, num_beams=3, num_return_sequences=3,
                  return_dict_in_generate=True, output_scores=True)  # fmt: skip
    cached, uncached = model.generate(ids, use_cache=True, **kwargs), model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)  # the beams' running sums were reordered with them
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-5, rtol=1e-5)
    output = model(ids, use_cache=True)
    sums = output.cache.mole_router_sums[0]
    assert sums[0].dtype == torch.float32 and sums[2] == 6  # float32 sums, and the cache length they cover
    output.cache.crop(-2)  # as assisted decoding does when it rejects drafted tokens
    with pytest.raises(ValueError, match="cut back"):
        model(ids[:, -1:], cache=output.cache)


@torch.no_grad()
def test_sequence_router_context_refuses_a_cache_it_did_not_fill(tiny_mole_dir, mole):
    model = MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, router_context="sequence").eval()
    ids = random_ids(model.config.vocab_size, shape=(1, 6))
    mole.set_routing(None)
    cache = mole(ids, use_cache=True).cache  # filled by a token-context model
    with pytest.raises(ValueError, match="filled without router_context='sequence'"):
        model(ids[:, -1:], cache=cache)
    with pytest.raises(ValueError, match="choose one of"):
        MoLELlamaConfig(router_context="document")
    with pytest.raises(ValueError, match="choose one of"):  # an override at load time is checked too
        MoLELlamaForCausalLM.from_pretrained(tiny_mole_dir, router_context="document")
