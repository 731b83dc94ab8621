"""The README's quickstart runs as written."""
import importlib.metadata
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_blocks_run_in_order(tmp_path, monkeypatch):
    """The quickstart, then every later python block, in one namespace as a reader would run them."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3, "README lost its python blocks"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"README python block {index}", "exec"), namespace)
    assert (tmp_path / "concept_heatmaps.png").stat().st_size > 0
    assert namespace["batch"].heatmap.shape == (32, 64, 64)
    assert len(namespace["top"]) == 4
    assert (tmp_path / "graph.png").stat().st_size > 0
    assert namespace["result"].nodes[0] == ("features.11", namespace["top"][0])
    assert namespace["flipping"].scores.shape == (1, 17)
    assert sorted(namespace["references"]) == sorted(namespace["top"][:2])
    assert len(namespace["targets"]) == 3 and (tmp_path / "fv_results" / "manifest.json").is_file()
    # the merged shards are the store of the single run, file for file
    merged, single = ({p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*")
                       if p.is_file()} for name in ("fv_merged", "fv_results"))
    assert len(merged) == 4 and merged == single
    windows = namespace["windows"]
    assert sorted(windows) == [0, 1] and all(len(w) == 4 for w in windows.values())
    assert all(namespace["text_mask"][w.index, w.token] == 1 for ws in windows.values() for w in ws)
    assert namespace["page"].count('class="crp-tokens"') == 4 and (tmp_path / "reference_tokens.png").is_file()


def test_quickstart_explains_the_predicted_class_for_any_seed(tmp_path, monkeypatch, capsys):
    """Ten random models and samples: the quickstart always explains something, and prints what it claims."""
    import torch

    quickstart = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    for seed in range(10):
        torch.manual_seed(seed)
        namespace = {}
        exec(compile(quickstart, "README quickstart", "exec"), namespace)
        result, shares, top = namespace["result"], namespace["shares"], namespace["top"]
        logits = result.prediction[0]
        assert namespace["predicted"] == int(logits.argmax()) and float(logits.max()) > 0, seed
        assert torch.isfinite(shares).all() and float(shares[top[0]]) > 0, seed
        assert float(shares.abs().sum()) == pytest.approx(1.0, abs=1e-5)
        assert shares[top].tolist() == sorted(shares.tolist(), reverse=True)[:4]
        # conservation, as the README says: heatmap, relevance at features.11 and logit sum to the same number
        relevance = float(result.relevances["features.11"].sum())
        assert float(result.heatmap.sum()) == pytest.approx(float(logits.max()), rel=1e-3), seed
        assert relevance == pytest.approx(float(logits.max()), rel=1e-3), seed
        heatmaps = namespace["heatmaps"]
        assert heatmaps.shape == (4, 64, 64) and (heatmaps.flatten(1).abs().sum(1) > 0).all(), seed
        printed = capsys.readouterr().out
        assert printed.startswith(f"class {namespace['predicted']} most relevant channels: {top}"), printed


def test_migration_note_on_composite_signatures():
    """zennit-crp's quickstart line fails inside zennit as the README quotes; the keyword form works."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    text = " ".join(README.read_text().split())
    assert "`EpsilonPlusFlat([SequentialMergeBatchNorm()])`" in text
    assert "`TypeError: Value [<zennit.canonizers.SequentialMergeBatchNorm object at ...>] is not a valid " \
           "stabilizer!`" in text
    with pytest.raises(TypeError, match=r"^Value \[<zennit\.canonizers\.SequentialMergeBatchNorm object at 0x[0-9a-f]+"
                                        r">\] is not a valid stabilizer!$"):
        EpsilonPlusFlat([SequentialMergeBatchNorm()])
    assert "`EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])`" in text
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    assert isinstance(composite.canonizers[0], SequentialMergeBatchNorm)


def test_memory_claims_hold():
    """The README's VGG16 figure is what the estimate gives, and the default batch of 32 needs over 7 GiB."""
    import torch
    from torchvision.models import vgg16
    from zennit.composites import EpsilonPlusFlat

    from crp._features.memory import estimate_memory
    from crp.attribution import CondAttribution

    text = " ".join(README.read_text().split())
    torch.manual_seed(0)
    estimate = estimate_memory(CondAttribution(vgg16().eval()), torch.randn(1, 3, 224, 224), EpsilonPlusFlat())
    mib = round(estimate.per_sample / 2 ** 20)
    claims = re.search(r"For VGG16 at 224×224 with `EpsilonPlusFlat` that is about (\d+) MiB per image \(float32; "
                       r"(\d+) MiB with zennit 1\.0", text)
    assert claims
    zennit10 = importlib.metadata.version("zennit").startswith("1.")  # its hooks keep more for the backward pass
    assert mib == int(claims[2] if zennit10 else claims[1])
    assert f"{claims[1]} estimated" in text and estimate.bytes_for(32) > 7 * 2 ** 30
