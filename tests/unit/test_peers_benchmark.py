"""The peers benchmark reads each system's own throughput log: its parsers, on real log lines."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import peers

# lines as fairseq-fixed 0.12.3.1 and OpenNMT-py 3.5.1 print them (their training logs)
FAIRSEQ_LOG = """\
2026-11-27 06:32:16 | INFO | fairseq_cli.train | num. shared model params: 12,451,440 (num. trained: 12,451,440)
2026-11-27 06:32:41 | INFO | train_inner | {"epoch": 1, "update": 0.076, "loss": "11.23", "wps": "1686.7", "ups": "0.44", "wpb": "3833.6", "num_updates": "10", "lr": "0.001"}
2026-11-27 06:33:01 | INFO | train_inner | {"epoch": 1, "update": 0.152, "loss": "9.726", "wps": "1786", "ups": "0.51", "wpb": "3517.9", "num_updates": "20", "lr": "0.001"}
2026-11-27 06:33:21 | INFO | train_inner | {"epoch": 1, "update": 0.228, "loss": "9.1", "wps": "1900.5", "ups": "0.52", "wpb": "3600", "num_updates": "30", "lr": "0.001"}
"""
ONMT_LOG = """\
[2026-11-27 06:33:14,000 INFO] * number of parameters: 12451440
[2026-11-27 06:33:38,737 INFO] Step 10/   20; acc: 8.8; ppl: 2488.2; xent: 7.8; lr: 0.00100; sents:    2427; bsz: 3438/3707/243; 1390/1499 tok/s;     25 sec;
[2026-11-27 06:33:58,915 INFO] Step 20/   20; acc: 12.0; ppl: 846.7; xent: 6.7; lr: 0.00100; sents:    2051; bsz: 2871/3128/205; 1423/1550 tok/s;     45 sec;
"""


def test_fairseq_windows_are_target_words_per_second_by_update():
    assert peers.fairseq_windows(FAIRSEQ_LOG) == [(10, 1686.7), (20, 1786.0), (30, 1900.5)]


def test_onmt_windows_take_the_target_side_of_its_tok_s_pair():
    assert peers.onmt_windows(ONMT_LOG) == [(10, 1499.0), (20, 1550.0)]


def test_the_steady_rate_leaves_the_warm_up_windows_out():
    rate = peers.steady(peers.fairseq_windows(FAIRSEQ_LOG), warmup=10)
    assert rate["tokens_per_s"] == pytest.approx((1786.0 + 1900.5) / 2)
    assert (rate["window_min"], rate["window_max"], rate["windows"]) == (1786.0, 1900.5, 2)
    with pytest.raises(SystemExit, match="no logged window after update 30"):
        peers.steady(peers.fairseq_windows(FAIRSEQ_LOG), warmup=30)
