"""`serve --ray`: the same HTTP API, its classifications run by model replicas on Ray Serve.

This process stays the HTTP front: the app of `server/app.py` (parsing, limits, auth, the
guardrail's prompt memory, metrics) with a `FleetPool` whose workers send each job through a
Ray Serve handle, keyed by its affinity key (`server/affinity.py`), to the `ModelReplica` that
`fleet_router.BoundedHashRouter` picks. Each replica loads the model once with its slots (and
its own prefix cache); Ray places it on `--threads` CPUs. The front holds no model but the
model file's tokenizer (`FrontClassifier`): it plans and counts each request's tokens before
admission (server/budget.py), and the replica runs those plans (tokenized once). The front's
rate estimate is the pool's own measure over the tokens the replicas report in their replies. A replica that dies mid-request costs
nothing but time: the job is sent again and lands on another replica (a classification is
idempotent). See docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import socket
import threading
import time
from typing import Any

from ..backends.base import Engine, Interrupt
from ..errors import (
    ClassificationCancelled,
    ClassificationTimeout,
    InputTooLongError,
    InvalidInputError,
    MissingDependencyError,
    WildGuardLiteError,
    require,
)
from ..runtime import Classifier, PlannedItem
from .pool import Job, WorkerPool
from .settings import ServeSettings

log = logging.getLogger("wildguard_lite.server")

DEPLOYMENT = "classifier"
ROUTER = "wildguard_lite.server.fleet_router:BoundedHashRouter"  # --affinity off: its round-robin
SEND_ATTEMPTS = 4  # a job is sent again after its replica died, at most this often in all
POLL_S = 0.25  # how often a waiting worker looks at its job's cancel event
CONNECT_TIMEOUT_S = 5.0  # a head's port that does not answer within this is unreachable
# An exception a replica raised, rebuilt in the front by its class name (Ray's own wrapping
# loses the message's first line among the traceback's).
ERRORS = {
    "InvalidInputError": InvalidInputError,
    "ClassificationCancelled": ClassificationCancelled,
    "ClassificationTimeout": ClassificationTimeout,
    "WildGuardLiteError": WildGuardLiteError,
}


class ModelReplica:
    """One model replica: the classifier with its slots; concurrent calls run batched."""

    def __init__(self, settings: ServeSettings):
        from ray import serve

        from .pool import default_factory, make_prefix_cache

        self.clf = default_factory(settings, make_prefix_cache(settings))(0, settings.engine_threads)
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def __call__(self, plans: list[PlannedItem]) -> dict[str, Any]:
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self.classify, plans, cancel)
        except asyncio.CancelledError:  # the front gave up on it: stop the engine's work
            cancel.set()
            raise

    def classify(self, plans: list[PlannedItem], cancel: threading.Event) -> dict[str, Any]:
        """The front's plans (made with this model file's tokenizer and the same settings) run."""
        reply: dict[str, Any] = {"replica": self.replica}
        try:
            reply["results"] = self.clf.classify_planned(plans, cancel=cancel)
        except InputTooLongError as exc:
            reply["error"] = ("InputTooLongError", str(exc), exc.n_tokens, exc.limit)
        except WildGuardLiteError as exc:
            name = next((n for n, cls in ERRORS.items() if isinstance(exc, cls)), "WildGuardLiteError")
            reply["error"] = (name, str(exc))
        reply["tokens_evaluated"] = self.clf.backend.tokens_evaluated
        return reply

    def __del__(self):
        clf = getattr(self, "clf", None)
        if clf is not None:
            clf.close()


def rebuilt_error(error: tuple) -> WildGuardLiteError:
    if error[0] == "InputTooLongError":
        exc = InputTooLongError(error[2], error[3])
        exc.args = (error[1],)
        return exc
    return ERRORS.get(error[0], WildGuardLiteError)(error[1])


class FleetCounters:
    """What the front's /metrics reads as its engine: tokens evaluated over every replica that
    ever answered (each reply carries its replica's running count)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.per_replica: dict[str, int] = {}

    def record(self, replica: str, tokens: int) -> None:
        with self._lock:
            self.per_replica[replica] = max(tokens, self.per_replica.get(replica, 0))

    @property
    def tokens_evaluated(self) -> int:
        with self._lock:
            return sum(self.per_replica.values())


class FleetEngine(Engine):
    """The front's engine: the context size plans are made for and the replicas' token counts
    (/metrics, the rate estimate); it evaluates nothing (the replicas do)."""

    def __init__(self, n_ctx: int, n_vocab: int):
        self.n_ctx, self.n_vocab = n_ctx, n_vocab
        self.counters = FleetCounters()

    @property
    def tokens_evaluated(self) -> int:  # type: ignore[override]  # read-only here: the replicas count
        return self.counters.tokens_evaluated

    def logits_at(self, ids, positions, interrupt: Interrupt | None = None):
        raise WildGuardLiteError("a fleet's front holds no model: its plans run on the replicas")


class FrontClassifier(Classifier):
    """The model file's tokenizer over a `FleetEngine`: `plan`/`plan_tokens` run here (the
    budget decides before admission), `classify`/`classify_planned` send the plans through the
    deployment's handle to a replica; the front's workers share it."""

    def __init__(self, handle, settings: ServeSettings):
        from ..loading import model_tokenizer

        assert settings.model is not None  # serve requires --model
        tokenizer = model_tokenizer(settings.model, settings.runtime)
        super().__init__(FleetEngine(settings.runtime.n_ctx, tokenizer.vocab_size), tokenizer, settings.runtime)
        self.handle = handle
        self.resent = 0  # jobs sent again because their replica died

    def classify(self, items, on_result=None, *, cancel=None, timeout=None, key: str | None = None):
        return self.classify_planned(self.plan(items), on_result, cancel=cancel, timeout=timeout, key=key)

    def classify_planned(self, plans, on_result=None, *, cancel=None, timeout=None, key: str | None = None):
        results = self.send(list(plans), cancel, None if timeout is None else time.monotonic() + timeout, key)
        for i, result in enumerate(results):
            if on_result is not None:
                on_result(i, result)
        return results

    def send(self, plans: list[PlannedItem], cancel, deadline: float | None, key: str | None):
        from ray.exceptions import RayActorError

        handle = self.handle.options(session_id=key) if key else self.handle
        for attempt in range(SEND_ATTEMPTS):
            response = handle.remote(plans)
            try:
                reply = wait(response, cancel, deadline)
            except RayActorError as exc:  # the replica died (or is unreachable): send it again
                if attempt + 1 == SEND_ATTEMPTS:
                    raise WildGuardLiteError(f"every replica tried failed ({type(exc).__name__}: {exc})") from None
                self.resent += 1
                log.warning("a replica failed (%s); sending the request again", type(exc).__name__)
                time.sleep(0.05 * 2**attempt)
                continue
            self.engine.counters.record(reply["replica"], reply["tokens_evaluated"])  # type: ignore[attr-defined]
            if "error" in reply:
                raise rebuilt_error(reply["error"])
            return reply["results"]
        raise AssertionError("unreachable")


def wait(response, cancel: threading.Event | None, deadline: float | None = None):
    while True:
        try:
            return response.result(timeout_s=POLL_S)
        except TimeoutError:
            if cancel is not None and cancel.is_set():
                response.cancel()
                raise ClassificationCancelled("cancelled while a replica classified it") from None
            if deadline is not None and time.monotonic() > deadline:
                response.cancel()
                raise ClassificationTimeout("timed out while a replica classified it") from None


class FleetPool(WorkerPool):
    """The worker pool of a fleet's front: its workers wait on replicas, each job routed by key."""

    def run(self, clf, job: Job) -> list[dict[str, Any]]:
        record = job.partial.__setitem__
        if job.plans is None:
            return clf.classify(job.items, on_result=record, cancel=job.cancel, key=job.key)
        return clf.classify_planned(job.plans, on_result=record, cancel=job.cancel, key=job.key)

    def extra_metrics(self) -> list[tuple[str, str, int]]:
        """/metrics lines of a fleet (server/metrics.py renders them)."""
        resent = self.classifier.resent if isinstance(self.classifier, FrontClassifier) else 0
        return [("wildguard_fleet_resent_total", "Requests sent again because their replica died.", resent)]


def connect(address: str) -> bool:
    """Join (or, for 'local', start) the Ray cluster; True when this process started it."""
    ray = require("ray", "fleet")
    require("ray.serve", "fleet")
    if tuple(int(part) for part in re.findall(r"\d+", ray.__version__)[:2]) < (2, 60):
        raise MissingDependencyError(
            f"serve --ray needs Ray 2.60 or later, this is {ray.__version__}: pip install 'wildguard-lite[fleet]'"
        )
    if ray.is_initialized():
        return False
    if address == "local":
        from ..defaults import available_cores

        try:
            ray.init(num_cpus=available_cores(), include_dashboard=False, log_to_driver=False)
        except Exception as exc:  # Ray gives its raylet 30 s to start: a very busy machine misses that
            raise WildGuardLiteError(f"--ray local: could not start a Ray instance here ({exc}); retry") from None
        return True
    host, _, port = address.rpartition(":")
    if host and port.isdigit():  # a head's address: say at once when nothing answers there
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise InvalidInputError(
                f"--ray {address}: cannot reach a Ray head there ({exc.strerror or exc}); start one with "
                "'ray start --head' on that machine, check the address, or use --ray local"
            ) from None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(
            f"--ray {address}: could not join a Ray cluster ({first}); start one with 'ray start --head', "
            "give this machine the head's token (~/.ray/auth_token or RAY_AUTH_TOKEN), or use --ray local"
        ) from None
    return False


def check_fleet_cpus(replicas: int, threads: int) -> None:
    """Ray would wait for ever for replicas it cannot place: refuse with a combination that fits."""
    import ray

    from ..ray_data import check_cpus

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
    node_cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    check_cpus(replicas, threads, cpus, node_cpus, "the Ray cluster", unit="--replicas")


def deploy(settings: ServeSettings, name: str):
    """Run the replicas (`settings.replicas`, each on `settings.engine_threads` CPUs) and return
    the deployment's handle; a replica that cannot load the model fails with the model's error."""
    serve = require("ray.serve", "fleet")
    from ray.serve.config import RequestRouterConfig

    check_fleet_cpus(settings.replicas, settings.engine_threads)
    serve.start(proxy_location="Disabled")  # no HTTP proxy: this process is the front
    replica_settings = dataclasses.replace(settings, api_key=None)  # replicas never see the key
    deployment = serve.deployment(
        ModelReplica,
        name=DEPLOYMENT,
        num_replicas=settings.replicas,
        max_ongoing_requests=settings.workers,
        ray_actor_options={"num_cpus": settings.engine_threads},
        request_router_config=RequestRouterConfig(
            request_router_class=ROUTER,  # type: ignore[arg-type]  # Ray takes an import path too
            request_router_kwargs={"round_robin": settings.affinity == "off"},
        ),
    )
    try:
        return serve.run(deployment.bind(replica_settings), name=name, route_prefix=None)
    except RuntimeError as exc:  # Ray's message names the deployment; its status holds the cause
        status = serve.status().applications.get(name)
        reports = [d.message for d in status.deployments.values()] if status is not None else []
        raise WildGuardLiteError(
            f"the replicas could not start: {replica_error(' '.join([*reports, str(exc)]))}"
        ) from None


def replica_error(text: str) -> str:
    """The model's own message in Ray's report of a failed deployment (a traceback)."""
    found = re.findall(r"wildguard_lite\.errors\.\w+: (.+)", text)
    if found:
        return found[-1].strip()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error (see the Ray logs)"


def app_name(settings: ServeSettings) -> str:
    """The Serve application: one per model and routing (Ray shares a deployment's router between
    the handles of one process, so a round-robin front must not reuse an affinity front's name)."""
    return f"wildguard-lite-{settings.model_name}" + ("-round-robin" if settings.affinity == "off" else "")


def start(settings: ServeSettings):
    """Connect, deploy and build the front's app (the FastAPI app of server/app.py); returns
    (app, started_ray). Used by `run` and by tests that run the front themselves."""
    from .app import create_app

    if settings.threads is None:  # the cores split between the replicas, as batch jobs do
        from ..defaults import default_threads

        runtime = dataclasses.replace(settings.runtime, threads=default_threads(share=settings.replicas))
        settings = dataclasses.replace(settings, runtime=runtime)
    started = connect(settings.ray or "local")
    try:
        handle = deploy(settings, app_name(settings))
    except BaseException:
        stop(settings, started)
        raise
    try:  # after the deployment: a model the replicas cannot load fails with their report
        remote = FrontClassifier(handle, settings)
    except BaseException:
        stop(settings, started)
        raise
    front = dataclasses.replace(settings, workers=settings.workers * settings.replicas)
    app = create_app(front, classifier_factory=lambda index, threads: remote, pool_class=FleetPool)
    app.state.fleet = remote
    return app, started


def stop(settings: ServeSettings, started: bool) -> None:
    """Remove the replicas; stop Ray when this process started it."""
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    if not ray.is_initialized():
        return
    try:
        if started:
            serve.shutdown()
        else:
            serve.delete(app_name(settings))
    except (ValueError, RayServeException):  # Serve never started (the CPU check refused): nothing to remove
        pass
    finally:
        if started:
            ray.shutdown()


def run(settings: ServeSettings) -> None:
    """`serve --ray`: the front on settings.host:port until SIGINT/SIGTERM, then the replicas go."""
    from .app import check_address, serve

    check_address(settings.host, settings.port)  # before the cluster and the replicas start
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    app, started = start(settings)
    log.info(
        "wildguard-lite serve --ray %s: %d replica(s) x %d thread(s), affinity %s",
        settings.ray,
        settings.replicas,
        settings.engine_threads,
        settings.affinity,
    )
    try:
        serve(dataclasses.replace(settings, workers=settings.workers * settings.replicas), app=app)
    finally:
        stop(settings, started)
