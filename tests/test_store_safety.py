"""The result store on disk: it deletes only what it wrote, verifies every read, stays inside its folder, has
one writer at a time, and cleans up after interrupted saves."""
import json
import os

import numpy as np
import pytest
import torch
from zennit.composites import EpsilonPlusFlat

from crp._features import store as store_module
from crp._features.store import ResultStore
from crp._utils.lock import FolderLock, FolderLockedError
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.helper import load_maximization
from crp.visualization import CorruptStoreError, FeatureVisualization

from helpers import LAYERS, TensorData, TinyNet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyNet().double().eval()


def make_fv(model, path):
    return FeatureVisualization(CondAttribution(model), TensorData(), {name: ChannelConcept() for name in LAYERS},
                                path=path, top_k=5)


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_only_folders_crp_wrote_are_deleted(model, tmp_path):
    mine = tmp_path / "results-000002"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own folder")
    stale = tmp_path / "results-000009"  # a save interrupted before its manifest: it carries crp's marker
    stale.mkdir()
    (stale / store_module.GENERATION_MARKER).write_text("written by crp")
    fv = make_fv(model, tmp_path)
    fv.run(EpsilonPlusFlat(), 0, 32, batch_size=8, checkpoint=1, verbose=False)
    assert (mine / "notes.txt").read_text() == "my own folder"
    assert not stale.exists()
    current = ResultStore(tmp_path).manifest["directory"]
    assert current != "results-000002" and (tmp_path / current / store_module.GENERATION_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.glob("results-*")) == sorted(["results-000002", current])


def test_every_read_verifies_the_checksum_once_per_process(model, tmp_path):
    fv = make_fv(model, tmp_path)
    fv.run(EpsilonPlusFlat(), verbose=False)
    store = ResultStore(tmp_path)
    file = tmp_path / store.manifest["directory"] / "conv2.max.npy"
    store_module._VERIFIED.clear()
    load_maximization(fv.RelMax.PATH, "conv2")
    assert any(key[0] == str(file.resolve()) for key in store_module._VERIFIED)
    data = bytearray(file.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the data of a finished store
    file.write_bytes(bytes(data))
    os.utime(file, ns=(0, 12345))  # a new modification time: the file is hashed again
    before = snapshot(tmp_path)
    with pytest.raises(CorruptStoreError, match=r"conv2\.max\.npy does not match its checksum"):
        load_maximization(fv.RelMax.PATH, "conv2")
    with pytest.raises(CorruptStoreError, match=r"conv2\.max\.npy does not match its checksum"):
        fv.get_max_reference(0, "conv2", plot_fn=None)
    with pytest.raises(CorruptStoreError, match=r"conv2\.max\.npy does not match its checksum"):
        fv.run(EpsilonPlusFlat(), resume=True, verbose=False)  # a finished store is verified, not trusted
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(directory="../outside"), r"names the results folder '\.\./outside'"),
    (lambda m: m["layers"]["conv1"]["files"]["max"].update(name="../../secret.npy"),
     r"lists the file '\.\./\.\./secret\.npy' for layer 'conv1'"),
])
def test_manifest_paths_stay_inside_the_store(model, tmp_path, edit, match):
    fv = make_fv(model, tmp_path / "fv")
    fv.run(EpsilonPlusFlat(), 0, 16, verbose=False)
    manifest_file = tmp_path / "fv" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    edit(manifest)
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(CorruptStoreError, match=match):
        load_maximization(fv.RelMax.PATH, "conv1")


def test_stale_manifest_temp_files_are_removed_by_the_next_save(model, tmp_path):
    fv = make_fv(model, tmp_path)
    fv.run(EpsilonPlusFlat(), 0, 16, verbose=False)
    stale = tmp_path / ".manifest.json.4242-deadbeef.tmp"  # a save killed while writing the manifest
    stale.write_text("{")
    mine = tmp_path / ".my-notes.tmp"
    mine.write_text("mine")
    fv.run(EpsilonPlusFlat(), 0, 16, verbose=False)
    assert not stale.exists() and mine.read_text() == "mine"


def test_one_writer_at_a_time(model, tmp_path):
    fv = make_fv(model, tmp_path)
    with FolderLock(tmp_path, description="another run"):
        with pytest.raises(FolderLockedError, match=r"'.*' is in use: .*pid"):
            fv.run(EpsilonPlusFlat(), 0, 16, verbose=False)
    assert not ResultStore(tmp_path).exists()
    fv.run(EpsilonPlusFlat(), 0, 16, verbose=False)  # the lock is released with the block
    assert ResultStore(tmp_path).manifest["complete"]
    assert not (tmp_path / ".crp-lock").exists()


def test_negative_ids_and_targets_are_out_of_range(model):
    attribution = CondAttribution(model)
    x = TensorData().samples[:2].clone().requires_grad_()
    with pytest.raises(IndexError, match=r"targets \[-1\] under 'y' are out of range .* use ids in \[0, 2\]"):
        attribution(x, [{"y": [-1]}])
    with pytest.raises(IndexError, match=r"concept ids \[-1\] are out of range for layer .conv1. with 4 channels"):
        attribution(x, [{"conv1": [-1], "y": [0]}])
    with pytest.raises(IndexError, match=r"-1.* out of range"):
        attribution(x, [{"conv1": {0: [-1]}, "y": [0]}], mask_map=ChannelConcept.mask_rf)


def test_negative_concept_ids_of_references_are_out_of_range(model, tmp_path):
    fv = make_fv(model, tmp_path)
    fv.run(EpsilonPlusFlat(), 0, 16, verbose=False)
    with pytest.raises(IndexError, match=r"concept ids \[-1\] are out of range for layer 'conv2'"):
        fv.get_max_reference(-1, "conv2", plot_fn=None)
    with pytest.raises(IndexError, match=r"concept ids \[-1\] are out of range"):
        fv.compute_stats(-1, "conv2")
    indices = load_maximization(fv.RelMax.PATH, "conv2")[0]
    assert (np.asarray(indices) >= 0).all()
