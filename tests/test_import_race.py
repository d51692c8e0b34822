"""The first import of transformers from several threads at once (Streamlit runs each page in a thread).

Unguarded, two threads that both do `from transformers import AutoConfig` first race inside transformers'
lazy module, and one gets "ImportError: cannot import name 'AutoConfig'" (seen about one time in three on
transformers 5.x). core.backbones._quiet_transformers does that first import once, under a lock.

Each round is a fresh Python process, so its threads really are the first to import transformers: no mocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.processes import ROOT

ROUNDS = 3  # the race is a matter of timing: each round is a fresh chance to lose it
THREADS = 8

SCRIPT = f"""
import json, threading, traceback

from core.backbones import _quiet_transformers, load_backbone_config, load_tokenizer
from core.config import RunConfig
from core.strategies import plan


def classes():
    _quiet_transformers()
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    return [AutoConfig.__name__, AutoModel.__name__, AutoTokenizer.__name__]


WORK = [  # what the pages do first: the Launch page's plan, a config read, a tokenizer, the bare import
    lambda: classes(),
    lambda: type(load_backbone_config("minilm-l6:1")).__name__,
    lambda: plan(RunConfig(backbone="minilm-l6:1"))["trainable_params"] > 0,
    lambda: type(load_tokenizer("minilm-l6")).__name__,
]
THREADS = {THREADS}
start = threading.Barrier(THREADS)
results, errors = {{}}, []


def work(i):
    start.wait()  # every thread reaches its first import at the same moment
    try:
        results[i] = WORK[i % len(WORK)]()
    except BaseException as exc:
        errors.append(f"thread {{i}}: " + "".join(traceback.format_exception_only(type(exc), exc)).strip())


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
