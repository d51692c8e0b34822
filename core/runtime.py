"""Process-level helpers of a training run: device choice, frozen modules' mode, signals, the run log."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from core.errors import ConfigError


class StopRequested(Exception):
    """Raised inside a worker when it must stop (SIGTERM); the last periodic checkpoint is kept."""


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=auto or cpu.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators: what a run draws before its own seeded steps (data, model)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_frozen_eval(module: torch.nn.Module) -> None:
    """Put every fully frozen sub-module in eval mode: frozen layers run without dropout."""
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        set_frozen_eval(child)


def create_time() -> float | None:
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - liveness checks fall back to the pid alone
        return None


def raise_stop_on_sigterm() -> None:
    """In a worker process: SIGTERM ends training through StopRequested instead of killing it mid-write."""
    import signal

    def handler(signum, frame):
        raise StopRequested("stopped by SIGTERM; the last periodic checkpoint is kept")

    signal.signal(signal.SIGTERM, handler)


def run_logger(path) -> logging.Logger:
    logger = logging.getLogger(f"freezelab.run.{path}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


def close_logger(logger: logging.Logger) -> None:
    """Close the run log's file: a worker may train several runs (Ray) and must not keep old files open."""
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
