"""Tests of crp.app.shapes_model: the network's layout, seeded training, the weight cache and the shortcut metrics."""
import logging
from dataclasses import replace

import pytest
import torch

import crp.app.shapes_model as models
from crp._utils.files import write_atomic
from crp.app.shapes import ARTIFACT_BOX, ShapesDataset
from crp.app.shapes_model import (
    ShapesNet,
    TrainSettings,
    cache_path,
    default_cache_dir,
    evaluate_shortcut,
    train_default_model,
)

TINY = TrainSettings(epochs=1, n_train=64, n_test=40, batch_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def train_tiny(cache, **kwargs):
    return train_default_model(cache, progress=False, settings=kwargs.pop("settings", TINY), threads=1, **kwargs)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_layout_and_output_shape():
    model = ShapesNet()
    layers = {name: type(module) for name, module in model.named_modules()}
    assert layers["features.0"] is torch.nn.Conv2d and layers["features.3"] is torch.nn.Conv2d
    assert layers["features.6"] is torch.nn.Conv2d and layers["classifier.0"] is torch.nn.Linear
    assert layers["classifier.2"] is torch.nn.Linear
    assert all(not getattr(m, "inplace", False) for m in model.modules())
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 4
    assert model(torch.rand(5, 3, 32, 32)).shape == (5, 4)
    assert ShapesNet(n_classes=3, image_size=16)(torch.rand(2, 3, 16, 16)).shape == (2, 3)


def test_bad_image_size():
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 8, got 30"):
        ShapesNet(image_size=30)
    with pytest.raises(ValueError, match="image_size must be an int >= 1, got 0"):
        ShapesNet(image_size=0)
    with pytest.raises(TypeError, match="image_size must be an int >= 1, got 32.0"):
        ShapesNet(image_size=32.0)


def test_cache_miss_then_hit(tmp_path):
    model, info = train_tiny(tmp_path)
    assert not info.from_cache and info.cache_file == cache_path(TINY, tmp_path) and info.cache_file.is_file()
    assert info.cache_file.name == f"shapesnet-{TINY.key()}.pt"
    again, info2 = train_tiny(tmp_path)
    assert info2.from_cache and same_weights(model, again)
    assert info2.train_seconds == pytest.approx(info.train_seconds)
    assert info2.test_accuracy == info.test_accuracy
    assert [p.name for p in tmp_path.iterdir()] == [info.cache_file.name]  # no temporary file is left


def test_force_retrains_and_training_is_seeded(tmp_path):
    model, _ = train_tiny(tmp_path)
    retrained, info = train_tiny(tmp_path, force=True)
    assert not info.from_cache and same_weights(model, retrained)


def test_other_settings_use_another_file(tmp_path):
    _, info = train_tiny(tmp_path)
    _, other = train_tiny(tmp_path, settings=replace(TINY, lr=1e-3))
    assert not other.from_cache and other.cache_file != info.cache_file
    _, epochs = train_default_model(tmp_path, epochs=0, progress=False, settings=TINY, threads=1)
    assert epochs.settings.epochs == 0 and epochs.cache_file not in (info.cache_file, other.cache_file)


def test_key_depends_on_code_versions(monkeypatch):
    key = TINY.key()
    monkeypatch.setattr(models, "__version__", "99.0")
    assert TINY.key() != key
    monkeypatch.undo()
    monkeypatch.setattr(models, "MODEL_VERSION", models.MODEL_VERSION + 1)
    assert TINY.key() != key
    monkeypatch.undo()
    monkeypatch.setattr(models, "DATA_VERSION", 99)
    assert TINY.key() != key


def test_stale_file_under_the_right_name_is_retrained(tmp_path, caplog):
    model, info = train_tiny(tmp_path)
    payload = torch.load(info.cache_file, weights_only=True)
    payload["settings"]["lr"] = 0.5  # a file whose content does not match its name
    torch.save(payload, info.cache_file)
    with caplog.at_level(logging.WARNING, logger="crp.app.shapes_model"):
        again, info2 = train_tiny(tmp_path)
    assert not info2.from_cache and "belongs to other settings" in caplog.text
    assert torch.load(info.cache_file, weights_only=True)["settings"]["lr"] == TINY.lr  # overwritten
    assert same_weights(model, again)


class NotWeights:
    """A pickled object that ``torch.load(weights_only=True)`` must refuse to build."""


@pytest.mark.parametrize("content", ["garbage", "object"])
def test_unreadable_or_unsafe_file_is_retrained(tmp_path, caplog, content):
    path = cache_path(TINY, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if content == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        torch.save({"key": TINY.key(), "state_dict": NotWeights()}, path)
    with caplog.at_level(logging.WARNING, logger="crp.app.shapes_model"):
        _, info = train_tiny(tmp_path)
    assert not info.from_cache and "cannot read cache file" in caplog.text
    assert torch.load(path, weights_only=True)["key"] == TINY.key()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CRP_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert cache_path(TINY).parent == tmp_path / "c"
    monkeypatch.delenv("CRP_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "crp"


def test_training_restores_global_torch_state(tmp_path):
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    train_default_model(tmp_path, progress=False, settings=TINY, threads=max(1, threads % 2 + 1))
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), state)


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    write_atomic(target, lambda path: path.write_text("one"))
    assert target.read_text() == "one"

    def fail(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, fail)
    assert target.read_text() == "one" and sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


class MarkReader(torch.nn.Module):
    """Predicts 'cross' (3) when the artifact patch is magenta, else 'circle' (0)."""

    def forward(self, x):
        r0, _, c0, _ = ARTIFACT_BOX
        pixel = x[:, :, r0, c0]
        marked = (pixel[:, 0] > 0.99) & (pixel[:, 1] < 0.01) & (pixel[:, 2] > 0.99)
        logits = torch.zeros(len(x), 4)
        logits[marked, 3] = 1
        logits[~marked, 0] = 1
        return logits


def test_evaluate_shortcut_by_hand():
    test = ShapesDataset("test", n=300, seed=3)
    labels, marked = test.labels, test.has_artifact
    correct = torch.where(marked, labels == 3, labels == 0).float()
    scores = evaluate_shortcut(MarkReader(), test, batch_size=7)
    assert scores["test_accuracy"] == pytest.approx(float(correct.mean()))
    assert scores["accuracy_with_artifact"] == pytest.approx(float(correct[marked].mean()))
    assert scores["accuracy_without_artifact"] == pytest.approx(float(correct[~marked].mean()))
    assert scores["shortcut_rate_with_artifact"] == 1.0
    assert scores["shortcut_rate_without_artifact"] == 0.0


def test_evaluate_shortcut_empty_group_is_nan():
    test = ShapesDataset("test", n=50, artifact_rate=0.0, other_rate=0.0)
    scores = evaluate_shortcut(MarkReader(), test)
    assert scores["accuracy_with_artifact"] != scores["accuracy_with_artifact"]  # NaN


@pytest.mark.parametrize("kwargs, error, match", [
    ({"settings": replace(TINY, epochs=-1)}, ValueError, "epochs must be an int >= 0, got -1"),
    ({"settings": replace(TINY, batch_size=0)}, ValueError, "batch_size must be an int >= 1, got 0"),
    ({"settings": replace(TINY, n_test=2.0)}, TypeError, r"n_test must be an int >= 1, got 2.0"),
    ({"settings": replace(TINY, lr=0.0)}, ValueError, "lr must be a positive number, got 0.0"),
    ({"settings": replace(TINY, lr="fast")}, TypeError, "lr must be a positive number, got 'fast'"),
    ({"settings": {"epochs": 1}}, TypeError, r"settings must be a TrainSettings, got \{'epochs': 1\}"),
    ({"threads": 0}, ValueError, r"threads must be an int >= 1, got 0\. None picks default_threads\(\)"),
    ({"threads": 1.5}, TypeError, "threads must be an int >= 1, got 1.5"),
])
def test_bad_training_arguments(tmp_path, kwargs, error, match):
    kwargs.setdefault("settings", TINY)
    with pytest.raises(error, match=match):
        train_default_model(tmp_path, progress=False, **kwargs)
    assert not any(tmp_path.iterdir())
