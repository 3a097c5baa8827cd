"""Dynamic batching: batched answers equal unbatched ones, and a batch never mixes fates."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from service.explain import REGISTRY, methods_for
from service.flows.base import Call
from service.flows.image import ImageFlow
from service.flows.image_batch import ImageAnswer, ImageJob
from service.handlers.image import ImageHandler
from service.metrics import Metrics
from service.pipeline import ExplainRequest, Payload, Pipeline, PredictRequest
from service.results import ImageResult
from service.runtime import Runtime
from service.timing import Timings
from service.worker import Batching, Worker
from tests.helpers import png
from training.shapes import make_shapes

# Cheap parameters, so that every method runs in the suite's time.
FAST = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 4},
    "gradient_shap": {"samples": 4},
    "occlusion": {"window": 16, "stride": 16},
}


def images(n: int, seed: int = 11) -> list[bytes]:
    return [png(Image.fromarray(a)) for a in make_shapes(n, seed=seed).images]


@pytest.fixture(scope="module")
def runtimes(cnn_archive: Path) -> Iterator[tuple[Runtime, Runtime]]:
    """The same archive twice: one runtime that never batches, one that waits to batch."""
    alone = Runtime.load([cnn_archive], metrics=Metrics(), batching=Batching(1, 0))
    batched = Runtime.load([cnn_archive], metrics=Metrics(), batching=Batching(16, 300))
    yield alone, batched
    alone.close()
    batched.close()


def requests() -> list[ExplainRequest | PredictRequest]:
    """Predictions and explanations with different methods, options and targets."""
    pictures = images(6)
    methods = methods_for("image")
    out: list[ExplainRequest | PredictRequest] = [PredictRequest("cnn", [Payload(pictures[0])])]
    for i, method in enumerate(methods):
        target = [None, "circle", "square,triangle", "2"][i % 4]
        picture = Payload(pictures[i % len(pictures)])
        out.append(ExplainRequest("cnn", [picture], [method], target, FAST.get(method, {})))
    out.append(ExplainRequest("cnn", [Payload(p) for p in pictures[:2]], ["gradcam", "saliency"]))
    return out


async def answer(pipeline: Pipeline, request: ExplainRequest | PredictRequest) -> Any:
    if isinstance(request, PredictRequest):
        return await pipeline.predict(request)
    results, _ = await pipeline.explain(request)
    return results


def test_batched_answers_equal_unbatched(runtimes: tuple[Runtime, Runtime]) -> None:
    alone, batched = runtimes
    todo = requests()

    async def run_all() -> tuple[list[Any], list[Any]]:
        one_by_one = [await answer(Pipeline(alone), r) for r in todo]
        together = await asyncio.gather(*(answer(Pipeline(batched), r) for r in todo))
        return one_by_one, list(together)

    one_by_one, together = asyncio.run(run_all())
    sizes = batched.metrics.registry.get_sample_value("glimpse_batch_size_sum", {"model": "cnn"})
    counts = batched.metrics.registry.get_sample_value("glimpse_batch_size_count", {"model": "cnn"})
    assert counts is not None and sizes is not None and sizes / counts > 1, "no batch formed"
    for single, joint in zip(one_by_one, together, strict=True):
        if not isinstance(single[0], ImageResult):
            assert len(single) == len(joint) == 1  # one image's top classes
            assert single[0] == pytest.approx(joint[0], abs=1e-5)
            continue
        for a, b in zip(single, joint, strict=True):
            assert a.prediction == pytest.approx(b.prediction, abs=1e-5)
            assert [t.target.index for t in a.targets] == [t.target.index for t in b.targets]
            assert [t.target.probability for t in a.targets] == pytest.approx(
                [t.target.probability for t in b.targets], abs=1e-5
            )
            for ta, tb in zip(a.targets, b.targets, strict=True):
                for ma, mb in zip(ta.maps, tb.maps, strict=True):
                    assert ma.method == mb.method
                    assert np.allclose(ma.values, mb.values, atol=1e-5), ma.method
                    assert ma.extras == pytest.approx(mb.extras, abs=1e-5)


def test_every_method_is_covered() -> None:
    covered = {r.methods[0] for r in requests() if isinstance(r, ExplainRequest)}
    assert (
        covered
        == set(methods_for("image"))
        == {m for m in REGISTRY if "image" in REGISTRY[m].kinds}
    )


def served(runtime: Runtime) -> tuple[ImageFlow, ImageHandler, Call, torch.Tensor]:
    """The cnn's flow and handler in `runtime`, a request's passage, and two inputs."""
    model = runtime.get("cnn")
    assert isinstance(model.flow, ImageFlow) and isinstance(model.handler, ImageHandler)
    inputs = model.handler.preprocess([Image.open(io.BytesIO(b)) for b in images(2)])
    return model.flow, model.handler, Pipeline(runtime)._call(model), inputs


def test_top_classes_come_most_probable_first_with_ties_in_index_order(
    runtimes: tuple[Runtime, Runtime],
) -> None:
    """The answers' probabilities are numpy (made once per batch in the worker); their top
    classes come most probable first, a tie in class order, at most k of them."""
    flow, handler, call, inputs = served(runtimes[0])
    [answer] = flow.process([(ImageJob(call, inputs[:1]), 0.0)])
    assert isinstance(answer, ImageAnswer) and isinstance(answer.probabilities, np.ndarray)
    classes = handler.classes
    tied = np.array([[0.1, 0.4, 0.4, 0.1], [0.7, 0.1, 0.1, 0.1]], dtype=np.float32)
    first, second = handler.top_classes(tied, 3)
    assert list(first) == [classes[1], classes[2], classes[0]]
    assert list(first.values()) == pytest.approx([0.4, 0.4, 0.1])
    assert list(second) == [classes[0], classes[1], classes[2]]
    assert len(handler.top_classes(tied, 10)[0]) == len(classes) == 4


def test_one_bad_job_fails_alone(runtimes: tuple[Runtime, Runtime]) -> None:
    """The batch function answers each job: a job whose input breaks the forward pass gets
    its exception, the others their answers, equal to what they get alone."""
    flow, handler, call, good = served(runtimes[0])
    bad = torch.zeros(1, 5, *handler.size)  # five channels: the first conv refuses it
    jobs = [ImageJob(call, good[:1]), ImageJob(call, bad), ImageJob(call, good[1:])]
    answers = flow.process([(job, 0.0) for job in jobs])
    assert isinstance(answers[1], RuntimeError)
    for job, got in zip((jobs[0], jobs[2]), (answers[0], answers[2]), strict=True):
        [expected] = flow.process([(job, 0.0)])
        assert isinstance(got, ImageAnswer) and isinstance(expected, ImageAnswer)
        assert np.allclose(got.probabilities, expected.probabilities, atol=1e-6)


class Recorder:
    """A batch function that remembers each batch and holds the first one until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, batch: Sequence[tuple[str, float]]) -> list[Any]:
        if not self.batches:
            self.release.wait(10)
        self.batches.append([job for job, _ in batch])
        return [f"done {job}" for job, _ in batch]


def test_a_client_cancelled_while_queued_takes_nothing_from_the_batch() -> None:
    recorder = Recorder()
    worker: Worker[str] = Worker("m", recorder, Batching(8, 0), 64, lambda depth: None)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(worker.run("a"))
        await asyncio.sleep(0.05)  # "a" is running and holds the worker
        queued = [asyncio.ensure_future(worker.run(job)) for job in ("b", "c", "d")]
        await asyncio.sleep(0.05)
        queued[1].cancel()  # "c" leaves while queued
        await asyncio.sleep(0.01)
        recorder.release.set()
        return await asyncio.gather(first, queued[0], queued[2])

    try:
        assert asyncio.run(scenario()) == ["done a", "done b", "done d"]
    finally:
        worker.close()
    assert recorder.batches == [["a"], ["b", "d"]]


def test_max_batch_delay_gathers_and_batch_size_caps() -> None:
    recorder = Recorder()
    recorder.release.set()
    worker: Worker[str] = Worker("m", recorder, Batching(3, 200), 64, lambda depth: None)
    try:
        futures = []
        for job in "abcde":
            futures.append(worker.submit(job))
            time.sleep(0.01)
        assert [f.result(timeout=5) for f in futures] == [f"done {j}" for j in "abcde"]
    finally:
        worker.close()
    assert recorder.batches == [["a", "b", "c"], ["d", "e"]]


def test_timings_are_per_request(runtimes: tuple[Runtime, Runtime]) -> None:
    """Each request of a batch records its own queue wait and the shared inference time."""
    _, batched = runtimes
    model = batched.get("cnn")
    timings = Timings("cnn")
    assert "queue" not in timings.ms
    results, ms = asyncio.run(
        Pipeline(batched).explain(ExplainRequest("cnn", [Payload(images(1)[0])], ["activation"]))
    )
    assert {"decode", "queue", "inference", "heatmap.activation", "encode"} <= set(ms)
    assert model.worker.alive


def test_a_batch_whose_methods_take_no_gradient_runs_under_inference_mode(
    runtimes: tuple[Runtime, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Predictions and activation maps take no gradient: their forward pass runs under
    torch.inference_mode (its outputs are inference tensors), with the same maps as a pass
    under no_grad. A batch that also holds Grad-CAM runs under no_grad."""
    flow, handler, call, inputs = served(runtimes[0])
    layer = handler.default_layer
    assert layer is not None
    activation, gradcam = REGISTRY["activation"](), REGISTRY["gradcam"]()

    def job(explainers: dict[str, Any], rows: slice) -> ImageJob:
        return ImageJob(call, inputs[rows], explainers, [None], frozenset({layer}))

    passes: list[bool] = []  # per forward pass: were its outputs inference tensors?
    infer = handler.infer

    def recorded(*args: Any, **kwargs: Any) -> Any:
        result = infer(*args, **kwargs)
        passes.append(result.probabilities.is_inference())
        return result

    monkeypatch.setattr(handler, "infer", recorded)  # the real pass, watched
    free = flow.process(
        [(ImageJob(call, inputs[:1]), 0.0), (job({"activation": activation}, slice(1, 2)), 0.0)]
    )
    mixed = flow.process(
        [
            (job({"activation": activation}, slice(0, 1)), 0.0),
            (job({"gradcam": gradcam}, slice(1, 2)), 0.0),
        ]
    )
    assert all(isinstance(a, ImageAnswer) for a in (*free, *mixed))
    assert passes == [True, False]
    with torch.no_grad():
        expected = handler.infer(inputs, capture=False, layers={layer}).activations[layer].mean(1)
    got = free[1].runs[0].attributions["activation"].maps[0]
    assert np.allclose(got, expected[1].numpy(), atol=1e-6)
    assert not REGISTRY["activation"].needs_gradients
    assert all(REGISTRY[m].needs_gradients for m in methods_for("image") if m != "activation")
