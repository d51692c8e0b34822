"""The first import of transformers from several threads at once (Streamlit runs each page in a thread).

transformers/__init__ ends by replacing itself in sys.modules with its lazy module. A thread whose
`from transformers import AutoConfig` arrives while another thread is still running that __init__ waits for
it, then gets the original module, which has no AutoConfig: "ImportError: cannot import name 'AutoConfig'".
core.backbones._quiet_transformers does that first import once, under a lock, and every caller goes through it.

Each round is a fresh Python process, so its threads really are the first to import transformers: no mocks.
Half the threads start at the same moment; the other half start while transformers/__init__ is running in
one of them, the moment that loses the race (unguarded, all 7 rounds tried failed: 3 to 6 of the 8 threads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.processes import ROOT

ROUNDS = 2  # each round: a fresh process, a fresh first import
THREADS = 8

SCRIPT = f"""
import json, sys, threading, time, traceback

import torch  # noqa: F401 - imported first here, so that the threads meet at transformers' import, not torch's

from core.backbones import _quiet_transformers, load_backbone_config, load_tokenizer
from core.config import RunConfig
from core.strategies import plan


def classes():
    _quiet_transformers()
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    return [AutoConfig.__name__, AutoModel.__name__, AutoTokenizer.__name__]


WORK = [  # what the pages do first: the bare import, a config read, the Launch page's plan, a tokenizer
    classes,
    lambda: type(load_backbone_config("minilm-l6:1")).__name__,
    lambda: plan(RunConfig(backbone="minilm-l6:1"))["trainable_params"] > 0,
    lambda: type(load_tokenizer("minilm-l6")).__name__,
]
THREADS = {THREADS}
start = threading.Barrier(THREADS)
results, errors = {{}}, []


def work(i):
    start.wait()  # the first half start at the same moment...
    if i >= THREADS // 2:  # ...the others while transformers/__init__ is still running in one of them
        deadline = time.monotonic() + 60
        while "transformers" not in sys.modules and time.monotonic() < deadline:
            time.sleep(0.0005)
    try:
        results[i] = WORK[i % len(WORK)]()
    except BaseException as exc:
        errors.append(f"thread {{i}}: " + "".join(traceback.format_exception_only(type(exc), exc)).strip())


assert "transformers" not in sys.modules, "the threads must do the first import"
threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=240)
print(json.dumps({{"done": sorted(results), "errors": errors, "alive": sum(t.is_alive() for t in threads)}}))
"""


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_threads_importing_transformers_first_at_once_all_succeed(round_):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["errors"] == [] and report["alive"] == 0, report
    assert report["done"] == list(range(THREADS)), report
