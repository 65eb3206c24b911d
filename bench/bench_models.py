"""Whole training steps (forward, loss, backward, SGD): LeNet-5 batch 64, ResNet-20 batch 128.

fastconv's models are skipped until ``fastconv.models`` provides them; PyTorch's equivalents
until torch is installed. After timing: the logits have the right shape and the loss is finite.
"""
import math

import pytest

from fastconv.benchmark import models
from fastconv.benchmark.cases import classify_exception

CASES = models.model_cases()


@pytest.mark.parametrize("mcase", CASES, ids=lambda m: f"{m.model}-{m.impl}")
def test_train_step(benchmark, mcase, n_threads):
    x, labels = models.model_inputs(mcase.batch, mcase.image_shape)
    try:
        step, n_params = mcase.build(mcase.model, x, labels)
        step()
    except Exception as exc:                            # noqa: BLE001
        status, reason = classify_exception(exc)
        if status == "unavailable":
            pytest.skip(f"unavailable: {reason}")
        raise
    benchmark.group = f"train_step:{mcase.model}"
    benchmark.extra_info.update(impl=mcase.impl, threads=n_threads, batch=mcase.batch,
                                params=n_params)
    loss = benchmark(step)
    assert math.isfinite(float(loss))
