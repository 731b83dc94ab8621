"""One rank of distributed FeatureVisualization runs, started by tests/test_distributed.py (torchrun or by hand).

Usage: ``python distributed_job.py SETTINGS_JSON``, the settings of one run or ``{"runs": [settings, ...]}``.
For each run it builds the tests' seeded TinyNet and TensorData, runs ``FeatureVisualization.run`` and prints
one line ``RESULT {json}`` (the files returned, or the error raised). One run makes crp create the process
group from the environment; several share a group this script creates (a user's group). A run's settings may
also make a rank fail:

- ``"die": [rank, batches]``: that rank's process ends (``os._exit(1)``) when it starts its batch number
  ``batches`` (from 0), as a killed process would;
- ``"fail_at": [rank, index]``: that rank's dataset raises when it reads item ``index``;
- ``"top_k": {rank: k}``: that rank keeps another number of samples (settings that differ across ranks).
"""
import json
import os
import sys

import torch
from zennit.composites import EpsilonPlusFlat

from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.visualization import FeatureVisualization

from helpers import LAYERS, TensorData, TinyNet  # tests/ is on the path: it holds this script


def build(path, rank, settings):
    torch.manual_seed(0)
    model = TinyNet().double().eval()
    fail = settings.get("fail_at")
    dataset = TensorData(fail_at=fail[1] if fail and fail[0] == rank else None)
    top_k = settings.get("top_k", {}).get(str(rank), 5)
    return FeatureVisualization(CondAttribution(model), dataset, {name: ChannelConcept() for name in LAYERS},
                                path=path, top_k=top_k)


def run(settings, rank, number):
    fv = build(settings["path"], rank, settings)
    die = settings.get("die")
    if die and die[0] == rank:
        original, calls = fv._analyze_batch, []

        def dying(*args, **kwargs):
            if len(calls) == die[1]:
                os._exit(1)
            calls.append(1)
            return original(*args, **kwargs)

        fv._analyze_batch = dying
    try:
        files = fv.run(EpsilonPlusFlat(), settings.get("start", 0), settings.get("end"),
                       batch_size=settings["batch_size"], checkpoint=settings["checkpoint"],
                       resume=settings.get("resume", False), verbose=False)
        result = {"files": [str(f) for f in files]}
    except Exception as error:  # noqa: BLE001 - reported to the test
        result = {"error": f"{type(error).__name__}: {error}"}
    # one write of the whole line: the ranks share torchrun's stdout, and a pipe keeps a write of up to 4 KiB whole
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), ("RESULT " + json.dumps({"rank": rank, "run": number, **result}) + "\n").encode())
    return "error" not in result


def main():
    settings = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    if "runs" not in settings:
        return 0 if run(settings, rank, 0) else 1
    torch.distributed.init_process_group("gloo")
    try:
        return 0 if all([run(one, rank, number) for number, one in enumerate(settings["runs"])]) else 1
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
