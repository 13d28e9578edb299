"""BitFit, bottleneck adapters, (IA)^3, prompt tuning and prefix tuning on tiny BERT, Llama and
GPT-2: exact parameter counts (closed forms from the config sizes), identity at init, what an
optimizer step changes, where gradients go, save/load, switching off, padding, prompt
initialisation, equivalence with PEFT on the same tensors, and bad input."""

from __future__ import annotations

import pytest
import torch
from peft import IA3Config, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import BertModel, BertTokenizerFast, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import cli_args, tiny_bert, tiny_gpt2, tiny_llama
from tunelab.config import validate_config
from tunelab.errors import UserError
from tunelab.methods import apply_method, common
from tunelab.methods.adapter import BottleneckAdapter
from tunelab.methods.ia3 import IA3Layer
from tunelab.methods.options import AdapterMethod, BitFitMethod, IA3Method, PrefixMethod, PromptMethod
from tunelab.tasks.classification import SequenceClassifier

BUILDERS = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}
FAMILIES = list(BUILDERS)
METHODS = ["bitfit", "adapter", "ia3", "prompt", "prefix"]
VOCAB = 64
ADAPTER_SIZE = 4
N_VIRTUAL = 3


def tiny_llama_gqa(seed: int = 0) -> LlamaForCausalLM:
    """Like conftest's tiny Llama but with grouped-query attention: 1 key/value head for 2 query heads."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def method_config(method: str, **overrides):
    defaults = {
        "bitfit": lambda: BitFitMethod(),
        "adapter": lambda: AdapterMethod(size=ADAPTER_SIZE),
        "ia3": lambda: IA3Method(),
        "prompt": lambda: PromptMethod(num_virtual_tokens=N_VIRTUAL, init="random"),
        "prefix": lambda: PrefixMethod(num_virtual_tokens=N_VIRTUAL),
    }
    cfg = defaults[method]()
    return cfg.model_copy(update=overrides) if overrides else cfg


def is_method_param(method: str, name: str) -> bool:
    """Whether a parameter name belongs to the tensors the method trains."""
    if method == "bitfit":
        return name.endswith(".bias")
    if method == "adapter":
        return ".adapter_down." in name or ".adapter_up." in name
    if method == "ia3":
        return name.endswith(".ia3_l")
    if method == "prompt":
        return name.endswith("soft_prompt.prompt")
    if method == "prefix":
        return name.endswith("kv_prefix.prefix_keys") or name.endswith("kv_prefix.prefix_values")
    raise AssertionError(method)


# ---------------------------------------------------------------- sizes and closed forms


def sizes(config) -> dict[str, int]:
    """Sizes read from a tiny model's config (GPT-2's MLP width is 4h when n_inner is unset)."""
    h = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h
    return {"L": config.num_hidden_layers, "h": h, "i": inner, "heads": heads, "kv": kv_heads,
            "hd": h // heads}


def bias_numel(model: nn.Module) -> int:
    """Every bias tensor of the model, found by ``module.bias`` (nothing about names)."""
    return sum(m.bias.numel() for m in model.modules() if isinstance(getattr(m, "bias", None), nn.Parameter))


def expected_count(method: str, family: str, config) -> int:
    """The method's trainable tensors, in closed form from the config sizes."""
    s = sizes(config)
    L, h, i, kv, hd = s["L"], s["h"], s["i"], s["kv"], s["hd"]
    if method == "bitfit":
        if family == "bert":
            # embeddings LayerNorm; per layer q, k, v, attention out, its LayerNorm, intermediate,
            # output dense, its LayerNorm; the pooler
            return h + L * (3 * h + h + h + i + h + h) + h
        if family == "gpt2":
            # per layer ln_1, c_attn (q, k, v), attn c_proj, ln_2, c_fc, mlp c_proj; then ln_f
            return L * (h + 3 * h + h + h + i + h) + h
        if family == "llama":
            # zero biases added to q, k, v, o, gate, up, down (not lm_head; RMSNorm has no bias)
            return L * (h + kv * hd + kv * hd + h + i + i + h)
    if method == "adapter":
        return L * 2 * (h * ADAPTER_SIZE + ADAPTER_SIZE + ADAPTER_SIZE * h + h)
    if method == "ia3":
        return L * (kv * hd + kv * hd + i)  # keys, values, feed-forward intermediate
    if method == "prompt":
        return N_VIRTUAL * h
    if method == "prefix":
        return L * 2 * kv * N_VIRTUAL * hd
    raise AssertionError(method)


def param_total(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- running the models


def batch(seed: int = 0, shape=(2, 6), pad: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    if pad:
        mask[0, -pad:] = 0  # right padding on the first row
    return ids, mask


def run(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """All outputs a loss can use: logits of a causal LM; last hidden state and pooler output of BERT."""
    out = model(input_ids=ids, attention_mask=mask)
    if hasattr(out, "logits"):
        return [out.logits]
    return [out.last_hidden_state, out.pooler_output]


def outputs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return run(model, ids, mask)[0]


def run_with(model, ids, mask, **kwargs) -> torch.Tensor:
    """The main output (logits, or the last hidden state) with extra keyword arguments."""
    out = model(input_ids=ids, attention_mask=mask, **kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def perturb_trainable(model: nn.Module, seed: int = 1, std: float = 0.3) -> None:
    """Move every trainable tensor away from its init (IA3's ones become normal around 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


def applied(family: str, method: str, seed: int = 0, builder=None, **overrides) -> nn.Module:
    model = (builder or BUILDERS[family])(seed)
    apply_method(model, method_config(method, **overrides), family)
    return model


def assert_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.equal(a, b), f"max abs diff {(a - b).abs().max().item():.3g}"


# ---------------------------------------------------------------- 1. exact parameter counts


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_trainable_count_matches_closed_form(method, family):
    model = BUILDERS[family]()
    base_total, base_biases = param_total(model), bias_numel(model)
    apply_method(model, method_config(method), family)
    counts = common.count_parameters(model, base_total)
    expected = expected_count(method, family, model.config)
    assert counts.trainable == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_method_param(method, n) for n in trainable), sorted(trainable)
    assert counts.total == base_total + counts.added
    if method == "bitfit":
        if family == "llama":
            assert base_biases == 0
            assert counts.added == expected  # every trained bias is new (zero-initialised)
            assert bias_numel(model) == expected
            assert model.lm_head.bias is None  # the vocabulary projection gets no bias
        else:
            assert counts.added == 0  # existing biases: nothing new
            assert expected == base_biases  # the closed form is every bias of the model
    else:
        assert counts.added == expected  # everything the method trains is new


def test_bitfit_without_adding_biases_trains_nothing_on_llama():
    model = tiny_llama()
    base_total = param_total(model)
    apply_method(model, BitFitMethod(add_missing_biases=False), "llama")
    counts = common.count_parameters(model, base_total)
    assert counts.trainable == 0 and counts.added == 0


@pytest.mark.parametrize("placement, per_layer", [("houlsby", 2), ("pfeiffer", 1)])
@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_count_by_placement(family, placement, per_layer):
    model = BUILDERS[family]()
    base_total = param_total(model)
    apply_method(model, AdapterMethod(size=ADAPTER_SIZE, placement=placement), family)
    s = sizes(model.config)
    h, m = s["h"], ADAPTER_SIZE
    expected = s["L"] * per_layer * (h * m + m + m * h + h)
    counts = common.count_parameters(model, base_total)
    assert counts.trainable == expected and counts.added == expected
    adapters = [mod for mod in model.modules() if isinstance(mod, BottleneckAdapter)]
    assert len(adapters) == s["L"] * per_layer


def test_houlsby_rank_4_on_each_layer_of_tiny_bert():
    """Seed 002, question 3.1.d: Houlsby adapters of bottleneck 4 after the attention output and
    the feed-forward output of every layer."""
    model = tiny_bert()
    base_total = param_total(model)
    apply_method(model, AdapterMethod(size=4), "bert")
    h, L = model.config.hidden_size, model.config.num_hidden_layers
    counts = common.count_parameters(model, base_total)
    assert counts.trainable == L * 2 * (h * 4 + 4 + 4 * h + h)
    for layer in model.encoder.layer:
        for adapter in (layer.attention.output.dense, layer.output.dense):
            assert isinstance(adapter, BottleneckAdapter)
            assert adapter.adapter_down.weight.shape == (4, h)
            assert adapter.adapter_up.weight.shape == (h, 4)
        # the residual LayerNorms stay where they were, outside the adapters
        assert not isinstance(layer.intermediate.dense, BottleneckAdapter)
        assert not isinstance(layer.attention.self.query, BottleneckAdapter)


@pytest.mark.parametrize("factor", [4, 2, 16])
def test_adapter_reduction_factor_sets_the_size(factor):
    model = tiny_bert()
    apply_method(model, AdapterMethod(reduction_factor=factor), "bert")
    h = model.config.hidden_size
    size = max(1, h // factor)
    adapters = [mod for mod in model.modules() if isinstance(mod, BottleneckAdapter)]
    assert adapters and all(a.adapter_down.out_features == size for a in adapters)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == model.config.num_hidden_layers * 2 * (h * size + size + size * h + h)


def test_ia3_shapes_on_gpt2_scale_only_k_and_v_of_c_attn():
    model = applied("gpt2", "ia3")
    h = model.config.hidden_size
    c_attn = model.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, IA3Layer)
    assert c_attn.ia3_l.shape == (2, h)
    assert c_attn.scale().shape == (3 * h,)
    with torch.no_grad():
        c_attn.ia3_l.fill_(2.0)
    scale = c_attn.scale()
    assert torch.equal(scale[:h], torch.ones(h))  # q keeps scale 1
    assert torch.equal(scale[h:], torch.full((2 * h,), 2.0))
    c_proj = model.transformer.h[0].mlp.c_proj
    assert isinstance(c_proj, IA3Layer) and c_proj.scale_input and c_proj.ia3_l.shape == (1, 4 * h)
    assert not isinstance(model.transformer.h[0].attn.c_proj, IA3Layer)


@pytest.mark.parametrize("method", METHODS)
def test_counts_on_llama_with_grouped_query_attention(method):
    """With fewer key/value heads the k/v-sized tensors (IA3, prefixes, bitfit's k/v biases) shrink."""
    model = tiny_llama_gqa()
    base_total = param_total(model)
    apply_method(model, method_config(method), "llama")
    counts = common.count_parameters(model, base_total)
    assert sizes(model.config)["kv"] == 1
    assert counts.trainable == expected_count(method, "llama", model.config)
    ids, mask = batch()
    assert torch.isfinite(outputs(model, ids, mask)).all()


@pytest.mark.parametrize("method", METHODS)
def test_count_on_a_classifier_adds_the_head(method):
    backbone = tiny_bert()
    base_total = param_total(backbone)
    num_labels = 3
    model = SequenceClassifier(backbone, num_labels=num_labels).eval()
    apply_method(model, method_config(method), "bert")
    counts = common.count_parameters(model, base_total)
    head = backbone.config.hidden_size * num_labels + num_labels
    method_count = expected_count(method, "bert", backbone.config)
    assert counts.trainable == method_count + head
    assert counts.added == (0 if method == "bitfit" else method_count) + head
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all(n.startswith("classifier.") or is_method_param(method, n) for n in trainable)
    assert type(model.classifier) is nn.Linear  # the head is trained in full, never wrapped


# ---------------------------------------------------------------- 2. outputs at init


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["bitfit", "adapter", "ia3"])
def test_identity_at_init(method, family):
    ids, mask = batch()
    base = BUILDERS[family]()
    model = applied(family, method)
    with torch.no_grad():
        base_out, out = run(base, ids, mask), run(model, ids, mask)
    for b, o in zip(base_out, out):
        assert_equal(o, b)
    if method == "bitfit" and family == "llama":
        added = [m.bias for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None]
        assert len(added) == 7 * model.config.num_hidden_layers
        assert all(torch.count_nonzero(b) == 0 for b in added)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_acts_through_leading_positions_it_then_drops(family):
    ids, mask = batch()
    base = BUILDERS[family]()
    model = applied(family, "prompt")
    prompt = model.base_model.soft_prompt.prompt
    assert prompt.shape == (N_VIRTUAL, model.config.hidden_size)
    base_out, out = outputs(base, ids, mask), outputs(model, ids, mask)
    B, T = ids.shape
    assert out.shape == base_out.shape  # one position per real token: the virtual ones are dropped
    assert not torch.allclose(out, base_out, atol=1e-4), "the prompt must change the outputs"
    # The real positions of the frozen base run on [prompt; token embeddings] with the mask extended.
    with torch.no_grad():
        embeds = torch.cat([prompt.unsqueeze(0).expand(B, -1, -1), base.get_input_embeddings()(ids)], dim=1)
        full_mask = torch.cat([torch.ones(B, N_VIRTUAL, dtype=mask.dtype), mask], dim=1)
        direct = base(inputs_embeds=embeds, attention_mask=full_mask)
    direct = direct.logits if hasattr(direct, "logits") else direct.last_hidden_state
    torch.testing.assert_close(out, direct[:, N_VIRTUAL:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_keeps_the_input_length(family):
    ids, mask = batch()
    base = BUILDERS[family]()
    model = applied(family, "prefix")
    prefix = model.base_model.kv_prefix
    s = sizes(model.config)
    assert prefix.prefix_keys.shape == (s["L"], s["kv"], N_VIRTUAL, s["hd"])
    assert prefix.prefix_values.shape == prefix.prefix_keys.shape
    base_out, out = outputs(base, ids, mask), outputs(model, ids, mask)
    assert out.shape == base_out.shape
    assert not torch.allclose(out, base_out, atol=1e-4), "the prefixes must change the outputs"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_caller_position_ids_do_not_shift_the_real_tokens(method, family):
    """A caller's position_ids count the T real tokens only (generate passes them); the virtual
    tokens come first, so the model must place the real tokens after them either way."""
    model = applied(family, method)
    ids, mask = batch(pad=0)
    positions = torch.arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)
    with torch.no_grad():
        plain = run(model, ids, mask)[0]
        given = run_with(model, ids, mask, position_ids=positions)
    assert_equal(given, plain)


# ---------------------------------------------------------------- 3. + 4. training touches only the method


def weighted_loss(model, ids, mask, weights) -> torch.Tensor:
    return sum((o * w).sum() for o, w in zip(run(model, ids, mask), weights))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_only_the_method(method, family):
    model = applied(family, method)
    ids, mask = batch()
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(o.shape, generator=g) for o in run(model, ids, mask)]
    weighted_loss(model, ids, mask, weights).backward()
    grads = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {name} got a gradient"
            continue
        assert is_method_param(method, name), name
        assert p.grad is not None, f"{name} got no gradient"
        grads += 1
        if method == "adapter" and ".adapter_down." in name:
            # up is zero at init, so nothing flows back to down yet
            assert torch.count_nonzero(p.grad) == 0, name
        elif method == "bitfit" and family == "bert" and name.endswith("attention.self.key.bias"):
            # q . (k + b) shifts every score of a query by the same amount: softmax ignores it
            assert p.grad.abs().max() < 1e-5, name
        else:
            assert torch.count_nonzero(p.grad) > 0, f"{name} got a zero gradient"
    assert grads > 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_optimizer_steps_change_only_the_method(method, family):
    model = applied(family, method)
    ids, mask = batch()
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(o.shape, generator=g) for o in run(model, ids, mask)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    method_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert method_names and all(is_method_param(method, n) for n in method_names)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)

    def step() -> set[str]:
        before = snapshot(model)
        optimizer.zero_grad(set_to_none=True)
        weighted_loss(model, ids, mask, weights).backward()
        optimizer.step()
        after = snapshot(model)
        return {n for n in before if not torch.equal(before[n], after[n])}

    initial = snapshot(model)
    first = step()
    if method == "adapter":
        up = {n for n in method_names if ".adapter_up." in n}
        down = {n for n in method_names if ".adapter_down." in n}
        assert up and down
        assert first == up  # down's gradient is zero while up is zero
        second = step()
        assert down <= second
    else:
        expected = set(method_names)
        if method == "bitfit" and family == "bert":
            # key biases: gradient zero up to rounding (see test_gradients_reach_only_the_method)
            expected = {n for n in expected if not n.endswith("attention.self.key.bias")}
        assert expected <= first
        step()
    final = snapshot(model)
    changed = {n for n in initial if not torch.equal(initial[n], final[n])}
    assert changed <= method_names, f"frozen tensors changed: {sorted(changed - method_names)}"
    assert changed, "nothing trained"


# ---------------------------------------------------------------- 5. save -> load


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_save_then_load_reproduces_outputs(method, family):
    ids, mask = batch(seed=3)
    model = applied(family, method)
    perturb_trainable(model)
    expected = outputs(model, ids, mask)
    state = {k: v.clone() for k, v in common.trainable_state(model).items()}
    assert state and all(is_method_param(method, k) for k in state)
    assert sum(v.numel() for v in state.values()) == expected_count(method, family, model.config)

    fresh = BUILDERS[family]()  # same base weights
    torch.manual_seed(1234)  # a different draw for the method's own init
    apply_method(fresh, method_config(method), family)
    assert not torch.allclose(outputs(fresh, ids, mask), expected, atol=1e-4), "the test would prove nothing"
    common.load_trainable_state(fresh, state)
    assert_equal(outputs(fresh, ids, mask), expected)


def test_load_rejects_a_state_of_another_method():
    model = applied("llama", "ia3")
    state = common.trainable_state(applied("llama", "adapter"))
    with pytest.raises(UserError, match="does not match"):
        common.load_trainable_state(model, state)


# ---------------------------------------------------------------- 6. switching off


DISABLE_METHODS = ["bitfit", "adapter", "ia3", "prompt", "prefix"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", DISABLE_METHODS)
def test_disable_adapters_gives_the_base_outputs(method, family):
    ids, mask = batch(seed=4)
    base = outputs(BUILDERS[family](), ids, mask)
    model = applied(family, method)
    perturb_trainable(model)
    adapted = outputs(model, ids, mask)
    if method in ("bitfit", "adapter", "ia3"):
        assert not torch.allclose(adapted, base, atol=1e-4)
    with common.disable_adapters(model):
        assert_equal(outputs(model, ids, mask), base)
    assert_equal(outputs(model, ids, mask), adapted)  # switched on again on exit


# ---------------------------------------------------------------- 7. prompt / prefix on a classifier with padding


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_virtual_tokens_on_a_padded_classification_batch(method, pooling):
    num_labels = 3
    model = SequenceClassifier(tiny_bert(), num_labels=num_labels, pooling=pooling).eval()
    apply_method(model, method_config(method), "bert")
    perturb_trainable(model)
    g = torch.Generator().manual_seed(6)
    short = torch.randint(5, VOCAB, (1, 4), generator=g)
    long = torch.randint(5, VOCAB, (1, 7), generator=g)
    pad = torch.randint(0, VOCAB, (1, 3), generator=g)  # pad ids are arbitrary: only the mask may matter
    ids = torch.cat([torch.cat([short, pad], dim=1), long])
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 4:] = 0

    pooled, body = {}, {}
    model.classifier.register_forward_hook(lambda mod, args, out: pooled.__setitem__("x", args[0].detach()))
    model.backbone.register_forward_hook(lambda mod, args, out: body.__setitem__("x", out.last_hidden_state))
    with torch.no_grad():
        batched = model(ids, mask)
    assert batched.shape == (2, num_labels)
    # The body's output holds the real tokens only (prompt tuning drops its virtual positions).
    assert body["x"].shape == (2, 7, model.config.hidden_size)
    assert pooled["x"].shape == (2, model.config.hidden_size)
    real = body["x"]
    manual = {"mean": (real * mask[..., None]).sum(1) / mask.sum(1, keepdim=True),
              "cls": real[:, 0],
              "last": real[torch.arange(2), mask.sum(1) - 1]}[pooling]
    torch.testing.assert_close(pooled["x"], manual, atol=1e-6, rtol=0)
    with torch.no_grad():
        alone_short = model(short, torch.ones_like(short))
        alone_long = model(long, torch.ones_like(long))
        with common.disable_adapters(model):
            plain_short = model(short, torch.ones_like(short))
    torch.testing.assert_close(batched[0:1], alone_short, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[1:2], alone_long, atol=1e-5, rtol=0)
    assert not torch.allclose(alone_short, plain_short, atol=1e-4), f"the {method} must change the prediction"


# ---------------------------------------------------------------- 8. prompt initialisation


def word_tokenizer(tiny_bert_dir) -> BertTokenizerFast:
    """The fixture folder's saved word-level tokenizer."""
    tokenizer = BertTokenizerFast.from_pretrained(tiny_bert_dir)
    assert tokenizer("good", add_special_tokens=False)["input_ids"] != [tokenizer.unk_token_id]
    return tokenizer


def test_prompt_text_init_repeats_the_token_embeddings(tiny_bert_dir):
    tokenizer = word_tokenizer(tiny_bert_dir)
    model = BertModel.from_pretrained(tiny_bert_dir).eval()
    ids = tokenizer("good movie", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2 and tokenizer.unk_token_id not in ids
    a, b = ids
    apply_method(model, PromptMethod(num_virtual_tokens=5, init="text", init_text="good movie"), "bert", tokenizer)
    prompt = model.soft_prompt.prompt
    embedding = model.get_input_embeddings().weight
    assert_equal(prompt.detach(), embedding[[a, b, a, b, a]].detach())
    assert prompt.requires_grad and not embedding.requires_grad
    assert prompt.data_ptr() != embedding.data_ptr()  # a copy: training the prompt leaves the vocabulary alone


def test_prompt_text_init_truncates_a_long_text(tiny_bert_dir):
    tokenizer = word_tokenizer(tiny_bert_dir)
    model = BertModel.from_pretrained(tiny_bert_dir).eval()
    text = "the plot was very dull"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 5
    apply_method(model, PromptMethod(num_virtual_tokens=2, init="text", init_text=text), "bert", tokenizer)
    assert_equal(model.soft_prompt.prompt.detach(), model.get_input_embeddings().weight[ids[:2]].detach())


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_vocab_init_takes_rows_of_the_embedding_matrix(family):
    model = BUILDERS[family]()
    torch.manual_seed(0)
    apply_method(model, PromptMethod(num_virtual_tokens=6, init="vocab"), family)
    prompt = model.base_model.soft_prompt.prompt.detach()
    embedding = model.get_input_embeddings().weight.detach()
    matches = (prompt[:, None, :] == embedding[None, :, :]).all(-1)  # (n, vocab)
    assert matches.any(-1).all(), "every prompt row must be a row of the embedding matrix"


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_random_init_is_not_a_vocabulary_row(family):
    model = BUILDERS[family]()
    apply_method(model, PromptMethod(num_virtual_tokens=6, init="random"), family)
    prompt = model.base_model.soft_prompt.prompt.detach()
    embedding = model.get_input_embeddings().weight.detach()
    assert not (prompt[:, None, :] == embedding[None, :, :]).all(-1).any()
    assert torch.isfinite(prompt).all() and prompt.std() > 0


def test_prompt_text_that_tokenizes_to_nothing_is_rejected(tiny_bert_dir):
    tokenizer = word_tokenizer(tiny_bert_dir)
    with pytest.raises(UserError) as err:
        apply_method(tiny_bert(), PromptMethod(num_virtual_tokens=5, init="text", init_text=""), "bert", tokenizer)
    message = str(err.value)
    assert "init_text" in message and "\n" not in message


def test_prompt_text_init_without_a_tokenizer_is_rejected():
    with pytest.raises(UserError) as err:
        apply_method(tiny_bert(), PromptMethod(num_virtual_tokens=5, init="text", init_text="good movie"), "bert")
    assert "tokenizer" in str(err.value)


# ---------------------------------------------------------------- 9. equivalence with PEFT


LM_BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
WORD_VOCAB = ["<pad>", "<unk>", "good", "movie", "bad", "film", "the", "plot"]


@pytest.fixture(scope="module")
def word_tokenizer_dir(tmp_path_factory):
    """A word-level tokenizer (no special tokens added), saved so PEFT can load it by path."""
    model = models.WordLevel({w: i for i, w in enumerate(WORD_VOCAB)}, unk_token="<unk>")
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    folder = tmp_path_factory.mktemp("word-tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


def lm_batch(seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows; the second is left-padded by two positions."""
    ids, mask = batch(seed=seed, shape=(2, 6), pad=0)
    mask[1, :2] = 0
    return ids, mask


def logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("family", ["llama", "gpt2", "llama-gqa"])
def test_prefix_matches_peft(family):
    builder = tiny_llama_gqa if family == "llama-gqa" else LM_BUILDERS[family]
    family = "llama" if family == "llama-gqa" else family
    n = 3
    ours = builder()
    apply_method(ours, PrefixMethod(num_virtual_tokens=n), family)
    prefix = ours.base_model.kv_prefix
    perturb_trainable(ours, seed=2, std=1.0)
    theirs = get_peft_model(builder(), PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n)).eval()
    weight = theirs.prompt_encoder.default.embedding.weight
    s = sizes(ours.config)
    assert weight.shape == (n, s["L"] * 2 * s["kv"] * s["hd"])
    with torch.no_grad():
        weight.copy_(torch.stack([prefix.prefix_keys, prefix.prefix_values], 1).permute(3, 0, 1, 2, 4).reshape(n, -1))
    ids, mask = lm_batch()
    base_out, ours_out, peft_out = logits(builder(), ids, mask), logits(ours, ids, mask), logits(theirs, ids, mask)
    assert ours_out.shape == peft_out.shape == base_out.shape
    assert not torch.allclose(ours_out, base_out, atol=1e-3)
    torch.testing.assert_close(ours_out, peft_out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(LM_BUILDERS))
def test_prompt_text_init_and_outputs_match_peft(family, word_tokenizer_dir):
    n, text = 4, "good movie bad"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(word_tokenizer_dir)
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert text_ids == [2, 3, 4]
    ours = LM_BUILDERS[family]()
    apply_method(ours, PromptMethod(num_virtual_tokens=n, init="text", init_text=text), family, tokenizer)
    prompt = ours.base_model.soft_prompt.prompt
    embedding = ours.get_input_embeddings().weight
    assert_equal(prompt.detach(), embedding[[2, 3, 4, 2]].detach())

    theirs = get_peft_model(LM_BUILDERS[family](), PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=text, tokenizer_name_or_path=str(word_tokenizer_dir))).eval()
    peft_prompt = theirs.prompt_encoder.default.embedding.weight
    assert_equal(prompt.detach(), peft_prompt.detach())  # the same text init

    ids, mask = lm_batch()
    ours_out, peft_out = logits(ours, ids, mask), logits(theirs, ids, mask)
    # PEFT keeps the virtual positions in its output; ours are the real tokens' only.
    assert ours_out.shape == (2, ids.shape[1], VOCAB) and peft_out.shape == (2, n + ids.shape[1], VOCAB)
    torch.testing.assert_close(ours_out, peft_out[:, n:], atol=1e-5, rtol=0)

    # After training-like changes: copy ours into PEFT, still the same logits.
    perturb_trainable(ours, seed=3, std=0.5)
    with torch.no_grad():
        peft_prompt.copy_(prompt)
    ours_out, peft_out = logits(ours, ids, mask), logits(theirs, ids, mask)
    base_out = logits(LM_BUILDERS[family](), ids, mask)
    assert not torch.allclose(ours_out, base_out, atol=1e-3)
    torch.testing.assert_close(ours_out, peft_out[:, n:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(LM_BUILDERS))
def test_prompt_random_init_copied_into_peft_matches(family):
    n = 4
    ours = LM_BUILDERS[family]()
    apply_method(ours, PromptMethod(num_virtual_tokens=n, init="random"), family)
    theirs = get_peft_model(LM_BUILDERS[family](), PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, prompt_tuning_init=PromptTuningInit.RANDOM)).eval()
    with torch.no_grad():
        theirs.prompt_encoder.default.embedding.weight.copy_(ours.base_model.soft_prompt.prompt)
    ids, mask = lm_batch(seed=11)
    torch.testing.assert_close(logits(ours, ids, mask), logits(theirs, ids, mask)[:, n:], atol=1e-5, rtol=0)


IA3_PEFT = {
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
}


@pytest.mark.parametrize("family", list(LM_BUILDERS))
def test_ia3_matches_peft(family):
    ours = LM_BUILDERS[family]()
    apply_method(ours, IA3Method(), family)
    perturb_trainable(ours, seed=4, std=0.3)  # normal around 1
    targets, feedforward = IA3_PEFT[family]
    theirs = get_peft_model(LM_BUILDERS[family](), IA3Config(
        task_type=TaskType.CAUSAL_LM, target_modules=targets, feedforward_modules=feedforward)).eval()
    ours_layers = {n: m for n, m in ours.named_modules() if isinstance(m, IA3Layer)}
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in theirs.named_modules()
                   if hasattr(m, "ia3_l") and hasattr(m, "base_layer")}
    assert sorted(ours_layers) == sorted(peft_layers)
    h = ours.config.hidden_size
    with torch.no_grad():
        for name, mine in ours_layers.items():
            target = peft_layers[name].ia3_l["default"]
            if mine.scale_input:
                assert target.shape == (1, mine.ia3_l.shape[1])
                target.copy_(mine.ia3_l.reshape(1, -1))
            elif family == "gpt2":  # fused c_attn: PEFT scales all 3h outputs, ours only k and v
                assert target.shape == (3 * h, 1) and mine.ia3_l.shape == (2, h)
                target.copy_(torch.cat([torch.ones(h), mine.ia3_l[0], mine.ia3_l[1]]).reshape(-1, 1))
                assert torch.equal(target.flatten(), mine.scale())
            else:
                assert target.shape == (mine.ia3_l.shape[1], 1)
                target.copy_(mine.ia3_l.reshape(-1, 1))
    ids, mask = lm_batch(seed=12)
    base_out = logits(LM_BUILDERS[family](), ids, mask)
    ours_out, peft_out = logits(ours, ids, mask), logits(theirs, ids, mask)
    assert not torch.allclose(ours_out, base_out, atol=1e-3)
    torch.testing.assert_close(ours_out, peft_out, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- 10. bad input


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_larger_than_hidden_is_rejected(family):
    model = BUILDERS[family]()
    h = model.config.hidden_size
    with pytest.raises(UserError) as err:
        apply_method(model, AdapterMethod(size=h + 1), family)
    message = str(err.value)
    assert "method.size" in message and str(h) in message and str(h + 1) in message and "\n" not in message
    assert not [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
    apply_method(BUILDERS[family](), AdapterMethod(size=h), family)  # a bottleneck of exactly h is allowed


@pytest.mark.parametrize("method", ["prompt", "prefix"])
@pytest.mark.parametrize("value", [0, -1])
def test_num_virtual_tokens_must_be_positive(method, value):
    with pytest.raises(UserError) as err:
        validate_config({"method": {"name": method, "num_virtual_tokens": value}})
    message = str(err.value)
    assert "method.num_virtual_tokens" in message and str(value) in message and "\n" not in message


@pytest.mark.parametrize("method, allowed", [
    ("ia3", ["name"]),
    ("bitfit", ["add_missing_biases", "name"]),
    ("adapter", ["activation", "name", "placement", "reduction_factor", "size"]),
    ("prompt", ["init", "init_text", "name", "num_virtual_tokens"]),
    ("prefix", ["hidden_size", "name", "num_virtual_tokens", "reparameterize"]),
])
def test_unknown_method_option_lists_that_methods_keys(method, allowed):
    with pytest.raises(UserError) as err:
        validate_config({"method": {"name": method, "r": 4}})
    message = str(err.value)
    assert "method.r" in message
    listed = message.split("allowed keys here:", 1)[1]
    assert [k.strip() for k in listed.split(",")] == allowed
    assert "alpha" not in listed  # not LoRA's keys


class _BodyWithoutCache(nn.Module):
    """A transformer body whose forward takes no past_key_values (nor inputs_embeds)."""

    def __init__(self):
        super().__init__()
        self.config = tiny_llama().config
        self.embed = nn.Embedding(VOCAB, self.config.hidden_size)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids, attention_mask=None):
        return self.embed(input_ids)


class _ModelWithoutCache(nn.Module):
    def __init__(self):
        super().__init__()
        self.base_model = _BodyWithoutCache()

    def forward(self, input_ids, attention_mask=None):
        return self.base_model(input_ids, attention_mask)


@pytest.mark.parametrize("method, argument", [("prefix", "past_key_values"), ("prompt", "inputs_embeds")])
def test_virtual_tokens_need_a_body_that_takes_them(method, argument):
    model = _ModelWithoutCache()
    with pytest.raises(UserError) as err:
        apply_method(model, method_config(method), "llama")
    message = str(err.value)
    assert argument in message and "_BodyWithoutCache" in message and f"{method} tuning" in message
    assert "\n" not in message
    assert not common.adapters(model)


def test_cli_rejects_an_adapter_wider_than_the_model(tiny_run_config, capsys, monkeypatch, tmp_path):
    from pathlib import Path

    from tunelab.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    overrides = {k: v for k, v in tiny_run_config.items() if k != "method"}  # drop the fixture's LoRA keys
    capsys.readouterr()
    rc = main(["train", *cli_args(overrides), "--method.name", "adapter", "--method.size", "999"])
    out, err = capsys.readouterr()
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in err and out == ""
    assert "999" in line and "hidden size 16" in line
    assert not Path(tiny_run_config["output"]["dir"]).exists(), "bad input must leave no run directory"
