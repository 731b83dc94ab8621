"""The README's quickstart runs as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quickstart_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], "README quickstart", "exec"), namespace)
    assert (tmp_path / "concept_heatmaps.png").stat().st_size > 0
    assert namespace["batch"].heatmap.shape == (32, 64, 64)
    assert len(namespace["top"]) == 4
