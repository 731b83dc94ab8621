"""The README's quickstart runs as written."""
import re
from pathlib import Path

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
