"""Time the transformers' speed goals: generate() against a loop of __call__, FeatureVisualization against AttnLRP.

Usage::

    python benchmarks/bench_transformers.py [--layer 6] [--neurons 3072] [--batch-size 32] [--repeats 2]
    python benchmarks/bench_transformers.py --fv [--sequences 1000] [--batch-size 32] [--repeats 2]

The workload is the one of the transformers issue: a GPT-2-small-shaped language model (12 blocks, 768
dimensions, 12 heads, 3072 MLP neurons per block, vocabulary 50257; random weights, seeded), 32 tokens, the
next-token logit explained with AttnLRP, one condition per neuron of the MLP layer ``neurons.<layer>``.
``generate`` computes the relevance above the layer once and only the part below it per batch; the loop calls
``__call__`` with the same batches (a forward and a backward pass each). Both run side by side in one process,
alternating, and the best of ``--repeats`` runs of each is kept. ``--neurons`` takes the first neurons only
(the ratio does not depend on their number, the time per neuron is the same for every batch).

``--fv`` times ``TextFeatureVisualization.run`` over ``--sequences`` sequences of up to 32 tokens (random ids,
every sequence padded to a random length of 16 to 32 tokens, a random next token as target), analyzing the MLP
neurons of every block (``neurons.0`` to ``neurons.11``, 36,864 concepts, RelMax and ActMax with per-target
statistics), against the plain AttnLRP pass over the same sequences: ``TokenAttribution`` with the composite
registered once, one ``{"y": [target]}`` condition per sequence, the input heatmap, in batches of the same
size. The goal of the transformers issue is a ratio of at most 1.2.
"""
import argparse
import os
import tempfile
import time

import torch


def workload(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    from crp.transformers import AttnLRP, LanguageModel, TokenAttribution

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.blocks, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
    model = GPT2LMHeadModel(config).eval().to(args.device)
    language_model = LanguageModel(model)
    attribution = TokenAttribution(language_model)
    embeddings = language_model.embed(torch.randint(0, 50257, (1, args.tokens), device=args.device))
    target = int(language_model(embeddings).argmax())
    layer = language_model.layer_names("neurons")[args.layer]
    conditions = [{layer: [neuron], "y": [target]} for neuron in range(args.neurons)]
    return attribution, embeddings, conditions, AttnLRP()


def run_generate(attribution, embeddings, conditions, composite, batch_size: int) -> torch.Tensor:
    results = attribution.generate(embeddings, conditions, composite, batch_size=batch_size, verbose=False)
    return torch.cat([result.heatmap for result in results])


def run_calls(attribution, embeddings, conditions, composite, batch_size: int) -> torch.Tensor:
    return torch.cat([attribution(embeddings, conditions[start:start + batch_size], composite).heatmap
                      for start in range(0, len(conditions), batch_size)])


def fv_workload(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    from crp.transformers import AttnLRP, LanguageModel, TokenAttribution, TokenConcept, TokenDataset

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.blocks, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
    language_model = LanguageModel(GPT2LMHeadModel(config).eval().to(args.device))
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50257, (args.sequences, args.tokens), generator=generator)
    lengths = torch.randint(args.tokens // 2, args.tokens + 1, (args.sequences,), generator=generator)
    mask = (torch.arange(args.tokens)[None] < lengths[:, None]).long()
    targets = torch.randint(0, 50257, (args.sequences,), generator=generator)
    layer_map = {name: TokenConcept() for name in language_model.layer_names("neurons")}
    return TokenAttribution(language_model), TokenDataset(ids, targets, attention_mask=mask), layer_map, AttnLRP()


def run_feature_visualization(attribution, dataset, layer_map, composite, *, batch_size: int, folder: str) -> None:
    from crp.transformers import TextFeatureVisualization

    fv = TextFeatureVisualization(attribution, dataset, layer_map, path=folder, device=attribution.device)
    fv.run(composite, batch_size=batch_size, verbose=False)


def run_attnlrp(attribution, dataset, composite, batch_size: int) -> None:
    ids, mask, targets = dataset.input_ids, dataset.attention_mask, dataset.targets
    device = attribution.device
    with attribution.context(composite):
        for start in range(0, len(ids), batch_size):
            stop = start + batch_size
            conditions = [{"y": [int(target)]} for target in targets[start:stop]]
            attribution(ids[start:stop].to(device), conditions, attention_mask=mask[start:stop].to(device))


def main_fv(args) -> float:
    attribution, dataset, layer_map, composite = fv_workload(args)
    best = {"FeatureVisualization.run": float("inf"), "AttnLRP pass": float("inf")}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            run_feature_visualization(attribution, dataset, layer_map, composite, batch_size=args.batch_size,
                                      folder=folder)
            best["FeatureVisualization.run"] = min(best["FeatureVisualization.run"], time.perf_counter() - start)
        start = time.perf_counter()
        run_attnlrp(attribution, dataset, composite, args.batch_size)
        best["AttnLRP pass"] = min(best["AttnLRP pass"], time.perf_counter() - start)
    n_concepts = 3072 * len(layer_map)
    print(f"GPT-2-small-shaped ({args.blocks} blocks), {len(dataset)} sequences of {args.tokens // 2} to "
          f"{args.tokens} tokens, {len(layer_map)} MLP layers ({n_concepts} concepts), batch size {args.batch_size}, "
          f"{args.device}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'method':<26} {'seconds':>9} {'ms / sequence':>14} {'ratio':>7}")
    for name, seconds in best.items():
        print(f"{name:<26} {seconds:>9.2f} {1000 * seconds / len(dataset):>14.2f} "
              f"{seconds / best['AttnLRP pass']:>7.2f}")
    return best["FeatureVisualization.run"] / best["AttnLRP pass"]


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--layer", type=int, default=6, help="the block whose MLP neurons are explained")
    parser.add_argument("--neurons", type=int, default=3072)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fv", action="store_true", help="time FeatureVisualization against the AttnLRP pass")
    parser.add_argument("--sequences", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.fv:
        return main_fv(args)
    attribution, embeddings, conditions, composite = workload(args)
    runs = {"generate": run_generate, "__call__ loop": run_calls}
    best = {name: float("inf") for name in runs}
    heatmaps = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            heatmaps[name] = run(attribution, embeddings, conditions, composite, args.batch_size)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    scale = heatmaps["__call__ loop"].abs().max()
    difference = float((heatmaps["generate"] - heatmaps["__call__ loop"]).abs().max() / scale)
    print(f"GPT-2-small-shaped ({args.blocks} blocks), {args.tokens} tokens, {len(conditions)} neurons of "
          f"neurons.{args.layer}, batch size {args.batch_size}, {args.device}, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}")
    print(f"{'method':<15} {'seconds':>9} {'ms / neuron':>12} {'ratio':>7}")
    for name, seconds in best.items():
        print(f"{name:<15} {seconds:>9.2f} {1000 * seconds / len(conditions):>12.2f} "
              f"{best['__call__ loop'] / seconds:>7.2f}")
    print(f"max |generate - __call__| / max |__call__| = {difference:.1e}")
    return best["__call__ loop"] / best["generate"]


if __name__ == "__main__":
    main()
