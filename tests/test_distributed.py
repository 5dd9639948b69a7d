"""Several processes, one run: real 2-process ``torchrun`` jobs (gloo, CPU) on tiny models and data.

Two launches serve every test here (process start-up dominates their cost): ``job`` runs, in one 2-process job,
image two-stage, image progressive, text fine-tune, text LoRA, a ``compare`` cell, resumes across process counts,
and last a run in which one process meets a bad input; ``killed`` is a run whose second process is SIGKILLed
after two epochs. The same runs in this (single) process are the references.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import BatchSampler, RandomSampler

import transferkit
from conftest import make_class_folders
from test_text import FILLER, NEGATIVE, POSITIVE, sentence, write_csv
from test_training import InterruptAt
from transferkit.data.text import LengthBucketSampler
from transferkit.distributed import ShardedBatches, World, share_of
from transferkit.errors import TransferKitError
from transferkit.features import weights_fingerprint
from transferkit.runfolder import RunFolder

JOB = Path(__file__).parent / "distributed_job.py"
BOUND_S = 60  # a failure ends every process within this many seconds (else they would wait 30 min in gloo)

# augment none and dropout 0: the 2-process run then differs from the 1-process run only by float rounding
IMAGE = {"model": "timm:test_efficientnet", "image_size": 32, "batch_size": 8, "workers": 0, "augment": "none",
         "dropout": 0.0, "patience": 0, "strategy": "two-stage", "epochs": 2, "head_epochs": 1}
TEXT = {"batch_size": 8, "epochs": 2, "patience": 0, "lr": 3e-3, "dropout": 0.0}


def flags(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def launch(commands: list[list], tmp: Path, fault: str | None = None, timeout: int = 600) -> dict:
    """Run ``commands`` in one ``torchrun --nproc-per-node 2`` job; returns its exit code, output and per-command
    exit codes. Child processes import this checkout's transferkit (also when it is installed elsewhere)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(Path(transferkit.__file__).parents[1]),
                                          *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("TK_FAULT", None)
    if fault:
        env.update(TK_FAULT=fault, TK_FAULT_FILE=str(tmp / "fault-time"))
    argv = [a for i, command in enumerate(commands) for a in ([] if i == 0 else ["---"]) + [str(c) for c in command]]
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(JOB), *argv], env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp)
    exits = [int(code) for code in re.findall(r"^command \d+: exit (-?\d+) in", done.stdout, re.M)]
    return {"code": done.returncode, "out": done.stdout, "err": done.stderr, "exits": exits, "ended": time.time(),
            "started": started}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / ("model.safetensors" if (run / "model.safetensors").is_file() else
                                "head.safetensors")))


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].numel())


def info(run: Path) -> dict:
    return json.loads((run / "transferkit.json").read_text())


# --- data, the two launches, and the 1-process references -------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_weights) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    images = root / "images"
    make_class_folders(images / "train", per_class=8)  # 24 training images: 3 global batches of 8
    make_class_folders(images / "val", per_class=3, start=1000)  # 9: does not divide by 2
    make_class_folders(images / "test", per_class=3, start=2000)
    texts = root / "texts"
    texts.mkdir()
    write_csv(texts / "train.csv", n=12)
    write_csv(texts / "val.csv", n=3, extra_rows=[f"{sentence(POSITIVE, 7)},pos"])  # 7 texts
    write_csv(texts / "test.csv", n=4, extra_rows=[f"{sentence(NEGATIVE, 9)},neg"])  # 9 texts
    return {"root": root, "images": images, "texts": texts, "weights": tiny_weights}


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    """test_text's tiny BERT (2 layers, hidden size 32), without dropout, as a local Hugging Face folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, "new", "text"]
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(str(folder))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(str(folder))  # no dropout: see IMAGE
    return folder


@pytest.fixture(scope="module")
def references(data, bert) -> dict[str, Path]:
    """The same runs in this one process (and a 1-process run cut after two epochs, resumed by the job)."""
    root = data["root"] / "single"
    image = {**IMAGE, "weights": str(data["weights"])}
    runs = {"two-stage": (data["images"], image),
            "progressive": (data["images"], {**image, "strategy": "progressive", "groups": 3, "head_fit": "sgd"}),
            "text": (data["texts"], {**TEXT, "model": str(bert), "strategy": "fine-tune"})}
    for name, (source, options) in runs.items():
        transferkit.train(source, out=str(root / name), progress=False, **options)
    with pytest.raises(KeyboardInterrupt):
        transferkit.train(data["images"], out=str(root / "cut"), progress=False, callbacks=[InterruptAt(2)], **image)
    return {name: root / name for name in [*runs, "cut"]}


@pytest.fixture(scope="module")
def killed(data) -> dict:
    """A 2-process two-stage run whose process 1 is SIGKILLed when epoch 3 starts (two epochs checkpointed)."""
    tmp = data["root"] / "killed"
    tmp.mkdir()
    image = {**IMAGE, "weights": str(data["weights"])}
    result = launch([["train", "--data", data["images"], *flags(image), "--out", tmp / "run", "-q"]], tmp,
                    fault="1:2:kill")
    result["run"] = tmp / "run"
    result["fault_time"] = float((tmp / "fault-time").read_text())
    shutil.copytree(tmp / "run", tmp / "copy")  # resumed by the job (2 -> 2) and here (2 -> 1)
    return result


@pytest.fixture(scope="module")
def job(data, bert, references, killed) -> dict:
    tmp = data["root"] / "job"
    tmp.mkdir()
    shutil.copytree(references["cut"], tmp / "cut")
    image = flags({**IMAGE, "weights": data["weights"]})
    runs = {name: tmp / name for name in ("two-stage", "progressive", "text", "lora", "scratch", "auto", "bad")}
    default = flags({k: v for k, v in {**IMAGE, "weights": data["weights"]}.items() if k != "strategy"})
    commands = [
        ["train", "--data", data["images"], *image, "--out", runs["two-stage"]],  # logs at INFO: the plan
        ["train", "--data", data["images"], *image, "--strategy", "progressive", "--groups", 3, "--head-fit", "sgd",
         "--out", runs["progressive"], "-q"],  # its head epoch: SGD on cached features
        ["train", "--data", data["texts"], "--model", bert, *flags(TEXT), "--strategy", "fine-tune", "--out",
         runs["text"], "-q"],
        ["train", "--data", data["texts"], "--model", bert, *flags({**TEXT, "lr": 5e-3}), "--strategy", "lora",
         "--out", runs["lora"], "-q"],
        ["compare", "--data", data["images"], "--model", "timm:test_efficientnet", "--weights", data["weights"],
         "--image-size", 32, "--batch-size", 8, "--workers", 0, "--epochs", 1, "--strategies", "linear-probe",
         "--per-class", 4, "--out", tmp / "compare"],
        ["train", "--data", data["images"], *image, "--strategy", "scratch", "--bn", "train", "--epochs", 1,
         "--out", runs["scratch"], "-q"],  # BatchNorm statistics per process (no SyncBatchNorm on CPUs)
        ["train", "--data", data["images"], *default, "--out", runs["auto"], "-q"],  # the default: --strategy auto
        ["train", "--resume", tmp / "cut", "-q"],  # started by 1 process, resumed by 2
        ["train", "--resume", killed["run"], "-q"],  # started by 2 processes (killed), resumed by 2
        ["train", "--data", data["images"], *image, "--epochs", 3, "--out", runs["bad"], "-q"],  # fails (TK_FAULT)
    ]
    result = launch(commands, tmp, fault="1:1:error")
    result.update(runs=runs, cut=tmp / "cut", fault_time=float((tmp / "fault-time").read_text()),
                  compare=tmp / "compare")
    return result


# --- what the launches show ----------------------------------------------------------------------------


def test_two_processes_write_one_run_folder_once(job):
    assert job["exits"][:8] == [0] * 8, job["err"][-3000:]
    run = job["runs"]["two-stage"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "config.yaml", "feature-cache", "metrics.jsonl",
                                                     "model.safetensors", "probe_head.safetensors",
                                                     "transferkit.json"]
    assert not list(run.rglob(".*"))  # no temporary files left
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]  # each epoch's line once
    assert job["out"].count(f"transferkit: {run}") == 1  # one report per job
    assert "Batch: 8 per step in total — 2 processes x 4" in job["err"]
    distributed = info(run)["distributed"]
    assert distributed["processes"] == 2 and distributed["global_batch"] == 8 and distributed["lr_scaling"] == "none"
    per_process = distributed["per_process"]
    # caches built once: the feature and decoded caches' train and val entries by process 0, read by process 1
    assert [p["cache_entries_built"] for p in per_process] == [4, 0]
    assert [p["cache_entries_reused"] for p in per_process] == [0, 4]
    # identical final weights in both processes, and they are what the folder holds
    assert per_process[0]["weights_sha256"] == per_process[1]["weights_sha256"]
    assert weights_fingerprint(transferkit.load(run).model)[:16] == per_process[0]["weights_sha256"]
    assert distributed["exact_head_fit"].startswith("fitted once by process 0")


def test_validation_and_test_count_every_sample_once(job, data):
    """9 validation and 9 test images, 7 validation and 9 test texts (length-bucketed): odd sizes for 2 processes."""
    for name, source, sizes in (("two-stage", data["images"], (9, 9)), ("text", data["texts"], (7, 9))):
        run = job["runs"][name]
        saved = info(run)
        assert saved["metrics"]["test"]["n"] == sizes[1]
        val = transferkit.load(run).evaluate(str(source / "val") if name == "two-stage" else str(source / "val.csv"))
        assert val["n"] == sizes[0]
        assert saved["metrics"]["val_accuracy"] == pytest.approx(val["accuracy"], abs=1e-6)
        assert saved["metrics"]["test"]["accuracy"] == pytest.approx(
            transferkit.load(run).evaluate(str(source / "test") if name == "two-stage" else
                                           str(source / "test.csv"))["accuracy"], abs=1e-6)


def test_two_processes_with_half_batches_equal_one_process(job, references):
    """Same global batch, seed and data: the 2-process run (4 samples per process per step) matches the 1-process
    run (8 per step) up to float rounding: same validation accuracy every epoch, weights within 1e-4."""
    for name in ("two-stage", "progressive", "text"):
        two, one = job["runs"][name], references[name]
        history = lambda run: [line["val_accuracy"] for line in map(json.loads, (run / "metrics.jsonl").open())]  # noqa: E731
        assert history(two) == pytest.approx(history(one), abs=1e-6), name
        assert max_difference(two, one) < 1e-4, name
        assert info(two)["metrics"]["test"]["accuracy"] == info(one)["metrics"]["test"]["accuracy"]


def test_every_strategy_and_compare_run_in_two_processes(job):
    for name in ("progressive", "lora", "scratch"):
        saved = info(job["runs"][name])
        assert saved["strategy"] == name
        fingerprints = {p["weights_sha256"] for p in saved["distributed"]["per_process"]}
        assert len(fingerprints) == 1, name  # BatchNorm running statistics included (scratch, --bn train)
    assert (job["runs"]["lora"] / "adapter").is_dir()
    auto = info(job["runs"]["auto"])  # every process measured the same features and so made the same choice
    assert auto["auto"]["strategy"] == auto["strategy"] and len(auto["distributed"]["per_process"]) == 2
    assert len({p["weights_sha256"] for p in auto["distributed"]["per_process"]}) == 1
    assert info(job["runs"]["scratch"])["distributed"]["batchnorm_statistics"].startswith("per process: over its 4")
    results = json.loads((job["compare"] / "results.json").read_text())
    assert [c["strategy"] for c in results["cells"]] == ["linear-probe"]
    assert (job["compare"] / "summary.md").is_file() and (job["compare"] / "report.html").is_file()


def test_resume_across_process_counts(job, killed, references):
    """1 -> 2 and 2 -> 2 in the job, 2 -> 1 here: each continues exactly where the checkpoint stood."""
    two_to_one = killed["run"].parent / "copy"
    transferkit.train(resume=str(two_to_one), progress=False)
    for resumed in (job["cut"], killed["run"], two_to_one):
        assert [line["epoch"] for line in map(json.loads, (resumed / "metrics.jsonl").open())] == [1, 2, 3]
        assert max_difference(resumed, references["two-stage"]) < 1e-4, resumed


def test_a_bad_input_in_one_process_ends_every_process_with_its_error(job):
    assert job["exits"][-1] == 2 and job["code"] != 0
    assert job["ended"] - job["fault_time"] < BOUND_S
    errors = [line for line in job["err"].splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("Cannot read image broken.png" in line for line in errors), errors
    assert any("process 1 of 2 failed; this one stopped with it" in line for line in errors)
    assert "[rank0]: Traceback" not in job["err"] and "[rank1]: Traceback" not in job["err"]
    assert len(re.findall(r"exitcode\s*: 2 ", job["err"])) == 2  # torchrun's report: both processes exited with 2
    bad = job["runs"]["bad"]
    assert RunFolder(bad).has_checkpoint and not (bad / "transferkit.json").exists()  # resumable


def test_a_killed_process_ends_the_job_within_bounded_time(killed):
    assert killed["code"] != 0 and killed["ended"] - killed["fault_time"] < BOUND_S
    errors = [line for line in killed["err"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1, killed["err"][-3000:]
    assert "ended without reporting an error" in errors[0] or "stopped by its launcher" in errors[0], errors
    assert len(re.findall(r"exitcode\s*: 2 ", killed["err"])) == 1 and re.findall(r"exitcode\s*: -9", killed["err"])


# --- the pieces, in this process -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 3])
def test_sharded_batches_split_every_batch_evenly_and_draw_like_one_process(size):
    torch.manual_seed(5)
    single = list(BatchSampler(RandomSampler(range(10)), 4, drop_last=False))
    parts = []
    for rank in range(size):
        torch.manual_seed(5)
        parts.append(list(ShardedBatches(BatchSampler(RandomSampler(range(10)), 4, drop_last=False), rank, size)))
    for step, batch in enumerate(single):
        shares = [p[step] for p in parts]
        assert len({len(s) for s in shares}) == 1  # equal parts (the last batch of 2 padded for 3 processes)
        assert set().union(*map(set, shares)) == set(batch)
        if len(batch) % size == 0:
            assert [i for s in shares for i in s] == batch
    torch.manual_seed(5)
    assert list(ShardedBatches(BatchSampler(RandomSampler(range(10)), 4, drop_last=False))) == single


def test_processes_other_than_rank_0_draw_their_own_augmentation():
    draws = []
    for rank in (0, 1):
        torch.manual_seed(3)
        batches = iter(ShardedBatches(LengthBucketSampler([5, 3, 8, 1], 2), rank, 2))
        first = next(batches)
        draws.append((first, torch.rand(1).item()))
    assert len(set(draws[0][0] + draws[1][0])) == 2  # the two halves of one batch
    assert draws[0][1] != draws[1][1]  # different random numbers after the draw
    torch.manual_seed(3)
    iter(LengthBucketSampler([5, 3, 8, 1], 2))
    assert torch.rand(1).item() == draws[0][1]  # rank 0 draws what one process would


def test_shares_cover_every_item_once():
    for n in (0, 1, 7, 9, 10):
        for size in (1, 2, 3, 4):
            items = [i for rank in range(size) for i in share_of(n, rank, size)]
            assert items == list(range(n))


def test_batch_size_must_split_among_processes(capsys):
    from test_cli import run_cli

    World(size=2).check_batch_size(8)
    with pytest.raises(TransferKitError, match="must be a multiple of the number of processes \\(3\\).*--batch-size 9"):
        World(size=3).check_batch_size(8)
    with pytest.raises(TransferKitError, match="resume it with 1, 2, 4 or 8 processes"):
        World(size=3).check_batch_size(8, resumed=True)
    code, _, err = run_cli(capsys, "plan", "--processes", 3, "--batch-size", 8)
    assert code == 2 and "error:" in err and "multiple of the number of processes" in err


def test_the_plan_states_the_global_batch_and_batchnorm_statistics(capsys):
    from test_cli import run_cli

    code, out, _ = run_cli(capsys, "plan", "--processes", 4, "--batch-size", 64, "--strategy", "scratch",
                           "--bn", "train", "--cpu")
    assert code == 0
    assert ("Batch: 64 per step in total — 4 processes x 16; the learning rates below apply to this global batch, "
            "unscaled") in out
    assert "per process: over its 16 samples, running statistics those of process 0 (SyncBatchNorm needs GPUs)" in out
    code, out, _ = run_cli(capsys, "plan", "--json", "--batch-size", 64)
    assert json.loads(out)["distributed"] == {"processes": 1, "global_batch": 64, "per_process_batch": 64,
                                              "lr_scaling": "none",
                                              "batchnorm_statistics": "n/a (no phase trains BatchNorm statistics)"}


def test_a_single_process_is_a_world_of_one():
    world = World()
    assert world.broadcast("x") == "x" and world.gather(3) == [3] and world.sum([1, 2]) == [1.0, 2.0]
    assert world.first_on_each_file_system(lambda: 7) == 7 and world.worker_init_fn() is None
    with world.together():
        pass
    assert np.array_equal(np.asarray(list(world.share(5))), np.arange(5))
