"""Tiny supported transformers with random weights (no downloads), and a snapshot of a model's state."""
import torch
from torch import nn

VOCABULARY = 40


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial norm weights and biases, as after training; float64, eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.1)
            elif parameter.dim() == 1:  # norm weights
                parameter.uniform_(0.5, 1.5)
    return model.double().eval()


def language_model(name: str, seed: int = 0) -> nn.Module:
    """A causal LM or sequence classifier: "gpt2", "llama", "qwen2", "qwen3", "gpt2-classifier",
    "llama-classifier"."""
    import transformers as hf

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCABULARY, bos_token_id=0, eos_token_id=0, pad_token_id=0, num_labels=3)
    llama_like = dict(hidden_size=8, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=32, **common)
    if name.startswith("gpt2"):
        config = hf.GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=16, **common)
        cls = hf.GPT2ForSequenceClassification if name.endswith("classifier") else hf.GPT2LMHeadModel
    elif name.startswith("llama"):
        config = hf.LlamaConfig(**llama_like)
        cls = hf.LlamaForSequenceClassification if name.endswith("classifier") else hf.LlamaForCausalLM
    elif name == "qwen2":  # the second layer attends to a sliding window of 3 tokens
        config = hf.Qwen2Config(use_sliding_window=True, sliding_window=3, max_window_layers=1, **llama_like)
        cls = hf.Qwen2ForCausalLM
    elif name == "qwen3":
        config = hf.Qwen3Config(head_dim=6, **llama_like)
        cls = hf.Qwen3ForCausalLM
    else:
        raise ValueError(name)
    return _randomize(cls(config), seed)


def vision_transformer(seed: int = 0) -> nn.Module:
    """torchvision's VisionTransformer on 8x8 images: 4 patches and a class token, 2 blocks of 2 heads."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=12,
                              num_classes=3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    return model.double().eval()


def tokens(rows: int = 2, length: int = 6, seed: int = 1) -> torch.Tensor:
    """Token ids without the padding id 0."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCABULARY, (rows, length), generator=generator)


def snapshot(model: nn.Module):
    """Every module's class, instance attributes that shadow methods, hooks, and the parameters' values."""
    modules = [(name, type(module), sorted(k for k in ("forward", "__class__") if k in module.__dict__),
                len(module._forward_hooks), len(module._forward_pre_hooks), len(module._backward_hooks))
               for name, module in model.named_modules()]
    return modules, {key: value.clone() for key, value in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before) -> None:
    modules, state = snapshot(model)
    assert modules == before[0]
    assert state.keys() == before[1].keys()
    assert all(torch.equal(state[key], before[1][key]) for key in state)
