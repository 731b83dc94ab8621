"""Cache keys cover every setting that changes reference images; ImageCache stores and finds them by rank."""
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat

from crp._features.cache import describe
from crp._features.references import cached_references
from crp.cache import Cache, CacheKey, CorruptCacheError, ImageCache
from crp.image import vis_img_heatmap, vis_opaque_img

ROOT = Path(__file__).resolve().parent.parent


def key(**changes):
    settings = dict(func_name="get_max_reference", layer_name="features.3", mode="relevance", rf=False,
                    plot=describe(vis_img_heatmap), composite=describe(EpsilonPlusFlat()), extra={"results": 1})
    settings.update(changes)
    return CacheKey(**settings)


def test_digest_is_stable_across_processes():
    code = ("from zennit.composites import EpsilonPlusFlat; from crp._features.cache import describe; "
            "from crp.cache import CacheKey; "
            "print(CacheKey('get_max_reference', 'features.3', 'relevance', False, None, "
            "describe(EpsilonPlusFlat()), {'results': 1}).digest())")
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])  # keeps a zennit found through it
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": path, "PYTHONHASHSEED": "123"}).stdout.strip()
    assert other == key(plot=None).digest()


@pytest.mark.parametrize("changes", [
    {"layer_name": "features.5"}, {"mode": "activation"}, {"rf": True}, {"func_name": "get_stats_reference"},
    {"plot": describe(vis_opaque_img)}, {"plot": describe(functools.partial(vis_img_heatmap, cmap="hot"))},
    {"composite": describe(EpsilonPlusFlat(epsilon=1e-3))},
    {"composite": describe(EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]))},
    {"composite": describe(EpsilonGammaBox(-3.0, 3.0))}, {"composite": None},
    {"extra": {"results": 2}},
])
def test_every_setting_changes_the_key(changes):
    assert key(**changes).digest() != key().digest()


def test_equal_settings_give_equal_keys():
    assert key().digest() == key(composite=describe(EpsilonPlusFlat())).digest()
    assert describe(EpsilonGammaBox(-3.0, 3.0, gamma=0.5)) != describe(EpsilonGammaBox(-3.0, 3.0, gamma=0.25))
    assert describe(EpsilonGammaBox(-3.0, 3.0)) == describe(EpsilonGammaBox(-3, 3))
    assert key().plot_name == "vis_img_heatmap"
    assert key(plot=describe(functools.partial(vis_opaque_img, alpha=0.1))).plot_name == "vis_opaque_img"


def test_describe_basic_values():
    assert describe([1, 2.5, None, True, "a", float("inf")]) == [1, 2.5, None, True, "a", "inf"]
    assert describe(torch.nn.Linear(2, 2)) == {"module": "torch.nn.modules.linear.Linear"}
    tensor = describe(torch.arange(3.0))
    assert tensor["array"] == [3] and tensor != describe(torch.arange(1.0, 4.0))
    assert describe({"b": 1, "a": {2, 1}}) == {"a": [1, 2], "b": 1}
    cyclic = []
    cyclic.append(cyclic)
    assert describe(cyclic) == ["<builtins.list>"]


def images(n, shade=0):
    return [Image.new("L", (3, 2), shade + i) for i in range(n)]


def test_image_cache_roundtrip(tmp_path):
    cache = ImageCache(tmp_path)
    cache.save({4: images(3), "4:1": (images(3), images(3, 50))}, key(), (2, 5))
    found, missing = cache.load([4, "4:1", 7], key(), (2, 6))
    assert [im.getpixel((0, 0)) for im in found[4]] == [0, 1, 2]
    assert [im.getpixel((0, 0)) for im in found["4:1"][1]] == [50, 51, 52]
    assert missing == {4: (5, 6), "4:1": (5, 6), 7: (2, 6)}
    assert cache.load([4], key(rf=True), (2, 3)) == ({}, {4: (2, 3)})
    assert (cache.folder(key()).parent / "key.json").is_file()
    assert not list(tmp_path.rglob("*.tmp"))
    merged = cache.extend_dict(found, {4: images(1, 9), "4:1": (images(1), images(1)), 8: images(1)})
    assert len(merged[4]) == 4 and len(merged["4:1"][0]) == 4 and len(merged[8]) == 1


def test_image_cache_errors(tmp_path):
    cache = ImageCache(tmp_path)
    with pytest.raises(TypeError, match="ImageCache saves PIL images, but the plot function returned int"):
        cache.save({0: [1, 2]}, key(), (0, 2))
    with pytest.raises(TypeError, match="cannot extend the references of id 0"):
        cache.extend_dict({0: images(1)}, {0: "x"})
    with pytest.raises(TypeError, match="abstract"):
        Cache(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_broken_cached_image_names_its_file_and_the_fix(tmp_path, damage):
    cache = ImageCache(tmp_path)
    noisy = [Image.effect_noise((64, 64), 80).convert("RGB") for _ in range(2)]  # large enough to cut in half
    cache.save({4: noisy}, key(), (0, 2))
    broken = cache.folder(key()) / "4_0_1.png"
    data = broken.read_bytes()
    broken.write_bytes(data[:len(data) // 2] if damage == "truncate" else b"not a png at all")
    reason = "image file is truncated" if damage == "truncate" else "cannot identify image file"
    with pytest.raises(CorruptCacheError, match=rf"cached reference image '{broken}' is truncated or corrupt \("
                                                rf"{reason}.*\); delete it \(or the whole cache folder "
                                                rf"'{tmp_path}'\), or pass overwrite=True, to draw the references "
                                                rf"again\."):
        cache.load([4], key(), (0, 2))
    drawn = cached_references(cache, [4], key=key(), r_range=(0, 2), compute=lambda _, ranks: noisy[slice(*ranks)],
                              overwrite=True)  # the fix the message names
    assert len(drawn[4]) == 2 and len(cache.load([4], key(), (0, 2))[0][4]) == 2


def test_describe_names_modules_in_closures():
    import math as module

    def uses_a_module(x):
        return module.sqrt(x)

    described = describe(uses_a_module)
    assert described["closure"] == [{"module": "math"}]
    assert describe(torch) == {"module": "torch"}
