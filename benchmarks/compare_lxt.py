"""Compare crp's AttnLRP and CP-LRP heatmaps with those of lxt 2.1 on GPT-2 and a ViT (random weights).

Usage (lxt 2.1 needs transformers 4.5x; make a separate environment outside the repository)::

    python -m venv /tmp/lxtvenv
    /tmp/lxtvenv/bin/pip install torch==2.14.1 torchvision lxt==2.1 transformers==4.53.3 zennit==0.5.1 tqdm \
        matplotlib pillow
    PYTHONPATH=. /tmp/lxtvenv/bin/python benchmarks/compare_lxt.py [--dtype float64] [--seeds 3]

For every model, rule variant and seed, lxt's heatmap (its "efficient" gradient*input implementation: the
model patched with ``lxt.efficient.monkey_patch``; zennit's hooks patched with ``monkey_patch_zennit`` for the
ViT's linear layers) is computed first; then crp's heatmap of the same model, which lxt has patched, with
:class:`crp.transformers.AttnLRP` or :class:`~crp.transformers.CPLRP` (epsilon rules with a tiny epsilon, as
lxt's gradient*input has none). The table shows the largest absolute difference divided by the largest
magnitude of lxt's heatmap.

lxt 2.1 ships CP-LRP only for torchvision's ViT; its AttnLRP reference for the ViT is lxt's own rule for the
attention (``lxt.efficient.rules.divide_gradient`` on queries and keys by 4, on values by 2, as lxt patches
Hugging Face attention) in a re-implemented ``nn.MultiheadAttention`` forward.
"""
import argparse
import functools
import subprocess
import sys

import torch
import torch.nn.functional as F

EPSILON = 1e-12


def gpt2(seed: int, dtype: torch.dtype):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=3, n_head=4, n_embd=64, vocab_size=200, n_positions=64, attn_implementation="eager")
    model = GPT2LMHeadModel(config).to(dtype).eval()
    with torch.no_grad():  # non-trivial norms and biases, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
            elif type(module).__name__ == "Conv1D":
                module.bias.normal_(0, 0.05)
    ids = torch.randint(0, 200, (1, 16))
    return model, ids


def vit(seed: int, dtype: torch.dtype):
    from torchvision.models import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4, hidden_dim=64, mlp_dim=128,
                              num_classes=10).to(dtype).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.1)
    return model, torch.randn(1, 3, 32, 32, dtype=dtype)


def lxt_gpt2(model, ids, variant: str) -> torch.Tensor:
    from lxt.efficient import monkey_patch
    from lxt.efficient.models import gpt2 as lxt_gpt2_map
    from transformers.models.gpt2 import modeling_gpt2

    monkey_patch(modeling_gpt2, lxt_gpt2_map.attnLRP if variant == "attnlrp" else lxt_gpt2_map.cp_LRP)
    embeddings = model.get_input_embeddings()(ids).detach().requires_grad_()
    logits = model(inputs_embeds=embeddings, use_cache=False).logits[0, -1]
    target = int(logits.argmax())
    logits[target].backward()  # gradient 1: the relevance at the output is the logit
    return (embeddings * embeddings.grad).sum(-1)[0].detach(), target


def crp_gpt2(model, ids, variant: str, target: int) -> torch.Tensor:
    from crp.transformers import CPLRP, AttnLRP, LanguageModel, TokenAttribution

    composite = (AttnLRP if variant == "attnlrp" else CPLRP)(epsilon=EPSILON, rule_epsilon=EPSILON)
    return TokenAttribution(LanguageModel(model))(ids, [{"y": [target]}], composite).heatmap[0]


def _lxt_mha_attnlrp(self, query, *_args, **_kwargs):
    """nn.MultiheadAttention (batch first, self-attention: key and value are the query) with lxt's uniform rule."""
    from lxt.efficient.rules import divide_gradient

    n, t, e = query.shape
    head = e // self.num_heads
    q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (x.view(n, t, self.num_heads, head).transpose(1, 2) for x in (q, k, v))
    q, k, v = divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) * head ** -0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(n, t, e)
    return self.out_proj(out), None


def lxt_vit(model, images, variant: str):
    from lxt.efficient import monkey_patch
    from lxt.efficient.models import vit_torch
    from lxt.efficient.patches import patch_method
    from lxt.efficient.zennit_patches import monkey_patch_zennit
    from torchvision.models import vision_transformer
    from zennit.composites import LayerMapComposite
    from zennit.core import BasicHook
    from zennit.rules import Epsilon
    from zennit.types import Convolution

    patch_map = dict(vit_torch.cp_LRP)
    if variant == "attnlrp":
        patch_map[vision_transformer.nn.MultiheadAttention] = functools.partial(patch_method, _lxt_mha_attnlrp)
    monkey_patch(vision_transformer, patch_map)
    original = BasicHook.forward, BasicHook.backward
    monkey_patch_zennit()
    try:
        composite = LayerMapComposite([(Convolution, Epsilon(EPSILON)), (torch.nn.Linear, Epsilon(EPSILON))])
        x = images.clone().requires_grad_()
        with composite.context(model):
            logits = model(x)[0]
            target = int(logits.argmax())
            logits[target].backward()  # gradient 1: the relevance at the output is the logit
    finally:
        BasicHook.forward, BasicHook.backward = original  # crp needs zennit's own convention
    return (x * x.grad).sum(1)[0].detach(), target


def crp_vit(model, images, variant: str, target: int) -> torch.Tensor:
    from crp.attribution import CondAttribution
    from crp.transformers import CPLRP, AttnLRP

    composite = (AttnLRP if variant == "attnlrp" else CPLRP)(epsilon=EPSILON, rule_epsilon=EPSILON)
    return CondAttribution(model)(images.clone().requires_grad_(), [{"y": [target]}], composite).heatmap[0]


def compare(model_name: str, variant: str, seed: int, dtype: torch.dtype) -> float:
    """max |crp - lxt| / max |lxt| of one case (lxt patches classes globally: run one case per process)."""
    build, reference, ours = {"gpt2": (gpt2, lxt_gpt2, crp_gpt2), "vit": (vit, lxt_vit, crp_vit)}[model_name]
    model, data = build(seed, dtype)
    expected, target = reference(model, data, variant)
    heatmap = ours(model, data, variant, target)
    return float((heatmap - expected).abs().max() / expected.abs().max())


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--case", nargs=3, metavar=("MODEL", "VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(compare(args.case[0], args.case[1], int(args.case[2]), getattr(torch, args.dtype)))
        return 0.0
    import lxt  # noqa: F401 (fail early without lxt)
    import transformers

    print(f"lxt 2.1, transformers {transformers.__version__}, torch {torch.__version__}, {args.dtype}")
    print(f"{'model':<6} {'variant':<9} {'seed':>4}  max |crp - lxt| / max |lxt|")
    worst = 0.0
    for model_name in ("gpt2", "vit"):
        for variant in ("attnlrp", "cp-lrp"):
            for seed in range(args.seeds):
                command = [sys.executable, __file__, "--dtype", args.dtype, "--case", model_name, variant, str(seed)]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                error = float(output.strip().splitlines()[-1])
                worst = max(worst, error)
                print(f"{model_name:<6} {variant:<9} {seed:>4}  {error:.2e}", flush=True)
    print(f"largest: {worst:.2e}")
    return worst


if __name__ == "__main__":
    main()
