"""The faust app that hosts the worker: lifecycle, logging and the worker CLI.

The hot path is Tally's own batch consumer (`streams.worker.Worker`), registered as a faust
service: faust's per-event Stream costs about 10x the machine's ceiling on this workload,
while a whole fetch per partition, decoded and aggregated in one pass, keeps up with it.
"""

from __future__ import annotations

import faust
from faust.app.base import BootStrategy
from mode import Service

from streams.worker import Worker
from tally.config import Settings


class _Boot(BootStrategy):
    """Faust's own consumer stays off: the batch worker owns the group membership."""

    enable_kafka_consumer = False
    enable_web = False


class _App(faust.App):
    BootStrategy = _Boot


def create_faust_app(settings: Settings, worker: Worker) -> faust.App:
    assert settings.bootstrap_servers, "the broker address is resolved before the app is built"
    app = _App(
        "tally",
        broker=[f"kafka://{s}" for s in settings.bootstrap_servers.split(",")],
        web_enabled=False,
        datadir=str(settings.data_dir / "faust"),
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=10,
        producer_acks=-1,
        topic_allow_declare=False,
        autodiscover=False,
    )

    @app.service
    class BatchWorker(Service):
        """Runs the batch consumer for as long as the faust app runs."""

        async def on_start(self) -> None:
            await worker.start()

        async def on_stop(self) -> None:
            await worker.stop()

    return app
