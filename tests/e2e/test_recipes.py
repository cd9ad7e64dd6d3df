"""Short CI variants of the recipes and the demo, through the installed `s2s` command only."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import sacrebleu
import yaml

from ..conftest import worker_threads

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def shell(script: Path, *args: str, env: dict[str, str], cwd: Path = ROOT) -> str:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    result = subprocess.run(
        ["bash", str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": path, **env},
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("task", "variants"),
    [
        (
            "addition",
            ["baseline", "reversed", "peeky", "reversed+peeky", "attention", "attention+reversed"],
        ),
        ("dates", ["plain", "peeky", "attention"]),
    ],
)
def test_toy_recipe_quick_variant(tmp_path, task, variants):
    env = {"QUICK": "1", "WORK": str(tmp_path)}
    threads = worker_threads()
    if threads is not None:  # the recipe fixes 2 threads; share the cores
        env["EXTRA"] = f"train.threads={threads}"
    out = shell(ROOT / "recipes/toy/run.sh", task, env=env)
    rows = [line for line in out.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [r.split("|")[1].strip() for r in rows] == variants
    references = (tmp_path / task / "raw" / "test.tgt").read_text().splitlines()
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        last_validation = float(cells[-3].rstrip("%"))
        via_translate = float(cells[-2].strip("*%"))
        # the final model decoded by `s2s translate` scores exactly as its last validation did
        assert via_translate == pytest.approx(last_validation, abs=0.01), row
        # and so does its chrF: after 30 updates exact match is 0% on both sides, chrF is not
        variant = tmp_path / task / cells[0]
        # EXTRA reaches every variant's training (the recipe's own setting is 2 threads)
        config = yaml.safe_load((variant / "config.yaml").read_text(encoding="utf-8"))
        assert config["train"]["threads"] == (threads or 2), row
        metrics = [
            json.loads(line) for line in (variant / "metrics.jsonl").read_text().splitlines()
        ]
        last = [m for m in metrics if m["kind"] == "valid"][-1]
        hypotheses = (variant / "test.hyp").read_text().splitlines()
        chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
        assert last["chrf"] > 1.0 and chrf == pytest.approx(last["chrf"], abs=0.01), row
    plot = tmp_path / task / f"{task}-accuracy.svg"
    assert ElementTree.parse(plot).getroot().tag.endswith("svg")
    if task == "dates":
        assert (tmp_path / "dates" / "attention-plots" / "000001.svg").exists()


def fake_multi30k(directory: Path) -> Path:
    """The demo's synthetic corpus laid out like Multi30k's raw directory (gzipped)."""
    raw = directory / "raw"
    subprocess.run(
        [sys.executable, str(ROOT / "demo/make_corpus.py"), str(raw), "--train", "3000"],
        check=True,
        capture_output=True,
    )
    layout = directory / "multi30k"
    layout.mkdir()
    names = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
    for split, name in names.items():
        for lang in ("en", "de"):
            data = (raw / f"{split}.{lang}").read_bytes()
            (layout / f"{name}.{lang}.gz").write_bytes(gzip.compress(data))
            if split == "test":
                for extra in ("test_2017_flickr", "test_2017_mscoco"):
                    (layout / f"{extra}.{lang}.gz").write_bytes(gzip.compress(data))
    # a test set with only one side of the pair (as Czech lacks test2017): the recipe skips it
    (layout / "test_2018_flickr.en.gz").write_bytes(gzip.compress(b"a lone source\n"))
    return layout


def test_multi30k_recipe_quick_variant(tmp_path):
    data = fake_multi30k(tmp_path)
    out = shell(
        ROOT / "recipes/multi30k/run.sh",
        "en-de",
        env={
            "QUICK": "1",
            "WORK": str(tmp_path / "work"),
            "MULTI30K": str(data),
            "VOCAB_SIZE": "400",
        },
    )
    table = [line for line in out.splitlines() if line.startswith("| test_")]
    assert [line.split("|")[1].strip() for line in table] == [
        "test_2016_flickr",
        "test_2017_flickr",
        "test_2017_mscoco",
    ]
    bleu = float(table[0].split("|")[2])
    assert bleu > 20.0, out  # 300 updates on the synthetic task: it learns (~97 at 200)
    work = tmp_path / "work" / "en-de-cpu-90min"
    score = json.loads((work / "test_2016_flickr.score.json").read_text())
    assert (
        "nrefs:1" in score["bleu"]["signature"] and "case:lc" in score["bleu_tok_lc"]["signature"]
    )
    assert ElementTree.parse(work / "valid-bleu.svg").getroot().tag.endswith("svg")
    # ensemble.sh over two runs (here the same one twice: an ensemble of a model with itself
    # translates as the model alone, and the two "seeds" have no spread)
    summary = shell(
        ROOT / "recipes/multi30k/ensemble.sh",
        "en-de",
        str(work),
        str(work),
        env={"MULTI30K": str(data), "OUT": str(tmp_path / "ensemble")},
    )
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")[3:-1]
        for line in summary.splitlines()
        if line.startswith("| test_")
    }
    single, again, spread, ensemble = (c.strip() for c in rows[("test_2016_flickr", "BLEU")])
    assert float(single) == bleu and again == single and spread == f"{bleu:.2f} ± 0.00"
    assert ensemble == single
    assert len(rows) == 3 * 3  # three test sets (test_2018 has no German side) x three metrics


def test_demo_runs_end_to_end_and_learns(tmp_path):
    out = shell(ROOT / "demo/run.sh", env={"DEMO_DIR": str(tmp_path / "demo")})
    accuracy = float(re.search(r"Exact-match accuracy on the test set: ([\d.]+)%", out).group(1))
    assert accuracy >= 90.0, out
    assert re.search(r"^BLEU = \d", out, re.MULTILINE)
    assert (tmp_path / "demo" / "attention" / "000001.svg").exists()
