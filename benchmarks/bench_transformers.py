"""Time TokenAttribution.generate() over the neurons of one MLP layer against a loop of __call__ batches.

Usage::

    python benchmarks/bench_transformers.py [--layer 6] [--neurons 3072] [--batch-size 32] [--repeats 2]

The workload is the one of the transformers issue: a GPT-2-small-shaped language model (12 blocks, 768
dimensions, 12 heads, 3072 MLP neurons per block, vocabulary 50257; random weights, seeded), 32 tokens, the
next-token logit explained with AttnLRP, one condition per neuron of the MLP layer ``neurons.<layer>``.
``generate`` computes the relevance above the layer once and only the part below it per batch; the loop calls
``__call__`` with the same batches (a forward and a backward pass each). Both run side by side in one process,
alternating, and the best of ``--repeats`` runs of each is kept. ``--neurons`` takes the first neurons only
(the ratio does not depend on their number, the time per neuron is the same for every batch).
"""
import argparse
import os
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


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--layer", type=int, default=6, help="the block whose MLP neurons are explained")
    parser.add_argument("--neurons", type=int, default=3072)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
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
