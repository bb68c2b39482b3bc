"""Policy inference: backends behind one interface, pre/post-processing, and the policy thread.

The policy runs on its own thread, once per new camera frame, and publishes its latest output with
the capture time of the frame it came from. The control loop only reads that output (an attribute
load), so inference time never becomes loop lateness; onnxruntime and numpy release the GIL while
they compute. An output older than `max_age_s` is treated as no output (neutral), so a stalled
camera or policy can never keep the car driving on an old command.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from brain.control.model import ModelError, ModelSpec, load_spec
from brain.hardware.robot import Action, Frame

log = logging.getLogger(__name__)


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def __init__(self, spec: ModelSpec, threads: int = 1) -> None: ...

    @abc.abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """x: float32 NCHW batch -> float32 (N, 2) [steering, throttle]."""


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, spec: ModelSpec, threads: int = 1) -> None:
        import onnxruntime as ort  # imported here: only a daemon with a policy pays for it

        path = spec.file_for(self.name)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: onnxruntime cannot load it: {e}") from None
        self.input_name = spec.input_name
        self.output_name = spec.output_name
        names = [i.name for i in self.session.get_inputs()]
        if self.input_name not in names:
            raise ModelError(f"{path}: no input named {self.input_name!r} (has {names})")

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]


class LiteRtBackend(Backend):
    """`.tflite` models through LiteRT (ai-edge-litert), else tflite-runtime."""

    name = "litert"

    def __init__(self, spec: ModelSpec, threads: int = 1) -> None:
        path = spec.file_for(self.name)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter
            except ImportError:
                raise ModelError("the litert backend needs `pip install brain[tflite]` "
                                 "(ai-edge-litert or tflite-runtime)") from None
        self.interp = Interpreter(model_path=str(path), num_threads=threads)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.inp["index"], x.astype(self.inp["dtype"]))
        self.interp.invoke()
        return np.asarray(self.interp.get_tensor(self.out["index"]), dtype=np.float32)


BACKENDS: dict[str, type[Backend]] = {"onnxruntime": OnnxRuntimeBackend, "litert": LiteRtBackend}


def downscale(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average an HxWx3 uint8 image to height x width (float32, 0..255).

    Repeated 2x2 box averaging in uint16 while the size halves exactly (640x480 -> 80x60 is three
    halvings, ~1 ms), then nearest sampling for any remaining non-power-of-two ratio.
    """
    x = image
    while x.shape[0] >= 2 * height and x.shape[1] >= 2 * width and \
            x.shape[0] % 2 == 0 and x.shape[1] % 2 == 0:
        x16 = x.astype(np.uint16)
        x16 = x16[0::2] + x16[1::2]
        x16 = x16[:, 0::2] + x16[:, 1::2]
        x = ((x16 + 2) >> 2).astype(np.uint8)
    if x.shape[0] != height or x.shape[1] != width:
        rows = (np.arange(height) * x.shape[0] // height)
        cols = (np.arange(width) * x.shape[1] // width)
        x = x[rows][:, cols]
    return x.astype(np.float32)


def preprocess(image: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """HxWx3 uint8 RGB -> 1x3xhxw float32 in 0..1 (the layout the seed policy was trained on)."""
    small = downscale(image, spec.input_width, spec.input_height)
    return np.ascontiguousarray(small.transpose(2, 0, 1)[None] * (1.0 / 255.0), dtype=np.float32)


def postprocess(y: np.ndarray) -> Action:
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if y.shape[0] < 2:
        raise ModelError(f"policy output has {y.shape[0]} values, expected 2")
    return Action(float(np.clip(y[0], -1.0, 1.0)), float(np.clip(y[1], -1.0, 1.0)))


class Policy:
    """A loaded model: spec + backend; `act(image)` runs pre-process, inference, post-process."""

    def __init__(self, spec: ModelSpec, backend: Backend, label: str = "") -> None:
        self.spec = spec
        self.backend = backend
        self.label = label  # the bundle it came from (OTA), shown instead of the spec's id

    @property
    def id(self) -> str:
        return self.label or self.spec.id

    def act(self, image: np.ndarray) -> Action:
        return postprocess(self.backend.run(preprocess(image, self.spec)))


def load_policy(model_dir: str, backend: str = "onnxruntime", threads: int = 1,
                label: str = "") -> Policy:
    spec = load_spec(model_dir)
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return Policy(spec, BACKENDS[backend](spec, threads), label)


class ActiveModel:
    """The one holder of the policy the robot runs (None until one is loaded).

    Every swap bumps `generation`. The policy thread publishes an output only if the
    generation it started from is still current, checked and set under `lock`, so an inference
    begun before a swap can never publish after it. Listeners run under the lock on every swap
    and must be trivial (clearing a field)."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.lock = threading.Lock()
        self._policy = policy
        self.generation = 0
        self._on_swap: list[Callable[[], None]] = []
        self._on_change: list[Callable[[], None]] = []

    @property
    def policy(self) -> Policy | None:
        return self._policy

    @property
    def id(self) -> str:
        policy = self._policy
        return policy.id if policy is not None else "none"

    def available(self) -> bool:
        return self._policy is not None

    def snapshot(self) -> tuple[Policy | None, int]:
        with self.lock:
            return self._policy, self.generation

    def on_swap(self, callback: Callable[[], None]) -> None:
        """`callback` runs under the lock at every swap (keep it to an attribute store)."""
        self._on_swap.append(callback)

    def on_change(self, callback: Callable[[], None]) -> None:
        """`callback` runs after every swap, outside the lock (mDNS, STATUS=, logs)."""
        self._on_change.append(callback)

    def swap(self, policy: Policy | None) -> int:
        """Make `policy` the active one; returns the new generation."""
        with self.lock:
            self._policy = policy
            self.generation += 1
            generation = self.generation
            for cb in self._on_swap:
                cb()
        for cb in list(self._on_change):
            try:
                cb()
            except Exception:
                log.exception("model change listener failed")
        return generation


@dataclass(frozen=True)
class PolicyOutput:
    action: Action
    t_frame: float  # capture time of the frame it was computed from
    t_done: float  # when inference finished
    frame_seq: int
    infer_s: float
    generation: int  # ActiveModel generation of the policy that computed it


class PolicyRunner:
    """Runs the active policy on every new frame from `frame_source` (a FrameSlot; None for a
    body without a camera, when it never produces an output) in its own thread. It exists
    whether or not a model is loaded: a swap starts it driving without a restart."""

    def __init__(self, model: ActiveModel, frame_source: Any, max_age_s: float = 0.25) -> None:
        self.model = model
        self.frame_source = frame_source
        self.max_age_s = max_age_s
        self.output: PolicyOutput | None = None
        self.enabled = threading.Event()
        self.errors = 0
        self.inferences = 0
        self.out_of_bounds = 0  # outputs beyond `bounds` (an OTA probation watches this)
        self.bounds: Any = None  # SafetyLimits to compare outputs with, or None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        model.on_swap(self._drop_output)

    def _drop_output(self) -> None:
        self.output = None  # the old model's last word must not drive the new one's ticks

    def start(self) -> None:
        if self.frame_source is None:
            log.warning("no camera: the policy cannot run (autonomous outputs stay neutral)")
            return
        # Subscribed before the loop can publish a frame: a lockstep camera then waits for this
        # thread from the very first frame, so a lockstep run is the same on every machine.
        cid = self.frame_source.subscribe()
        self._thread = threading.Thread(target=self._run, args=(cid,), name="policy",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def latest(self, now: float) -> Action | None:
        """Loop thread: the newest output if fresh enough, else None (treated as neutral)."""
        out = self.output
        if out is None or now - out.t_frame > self.max_age_s:
            return None
        return out.action

    def _run(self, cid: int) -> None:
        # A lockstep camera waits for this thread to be done with each frame (FrameSlot.ack).
        try:
            self._infer_frames(cid)
        finally:
            self.frame_source.unsubscribe(cid)

    def _infer_frames(self, cid: int) -> None:
        seq = -1
        source = self.frame_source
        while not self._stop.is_set():
            if not self.enabled.wait(timeout=0.1):
                continue
            frame: Frame | None = source.wait_newer(seq, timeout=0.1)
            if frame is None:
                continue
            seq = frame.seq
            try:
                self._infer(frame)
            finally:
                source.ack(cid, seq)

    def _infer(self, frame: Frame) -> None:
        policy, generation = self.model.snapshot()
        if policy is None:
            return
        t0 = time.perf_counter()
        try:
            action = policy.act(frame.image)
        except Exception:
            self.errors += 1
            if self.errors <= 3 or self.errors % 100 == 0:
                log.exception("policy inference failed (%d so far)", self.errors)
            with self.model.lock:
                if self.model.generation == generation:
                    self.output = None
            return
        dt = time.perf_counter() - t0
        out = PolicyOutput(action, frame.t_capture, time.monotonic(), frame.seq, dt,
                           generation)
        with self.model.lock:
            if self.model.generation != generation:
                return  # swapped while this ran: its output belongs to the old model
            self.output = out
            self.inferences += 1
            bounds = self.bounds
            if bounds is not None and bounds.clamp(action) != action:
                self.out_of_bounds += 1
