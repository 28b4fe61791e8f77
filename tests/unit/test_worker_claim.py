"""The worker's claims on a real SQLite store: the jobs it runs (``keep``) go with a claim only after
a claim that raised, whose answer may be lost with its jobs committed as running for nobody. And
its job lines' logger, bound once, follows a reload's level."""

import io
import json

import pytest
import structlog

from bridge.app import Bridge
from bridge.logs import configure
from bridge.metrics import Metrics
from bridge.settings import load_settings
from bridge.store.jobs import JobStore
from bridge.store.writer import WriterUnavailable
from bridge.sync import SyncContext
from bridge.worker import Worker


async def test_after_a_claim_whose_answer_was_lost_the_next_puts_its_jobs_back(tmp_path):
    settings = load_settings(None, database={"path": str(tmp_path / "w.db")},
                             worker={"poll_interval_s": 0.01})
    store = JobStore.open(settings.database.path)
    real_claim = store.claim
    keeps: list = []
    lost: list = []

    async def claim(limit, lease_s, keep=None):
        keeps.append(keep)
        jobs = await real_claim(limit, lease_s, keep=keep)
        if len(keeps) == 1:  # committed, then the answer is lost (the writer died on the way back)
            lost.extend(jobs)
            raise WriterUnavailable("the database writer process stopped; the call may not be committed")
        return jobs

    store.claim = claim
    try:
        payload = json.dumps({"connection": "default"})
        job_id, _ = await store.enqueue("k1", 60, "default", "add", "c1", payload)
        worker = Worker(SyncContext(settings, None, {}, store), store, Metrics(["default"]))
        spawned: list[str] = []
        worker._jobs.spawn = lambda coro, name: (coro.close(), spawned.append(name))  # claimed, not run

        with pytest.raises(WriterUnavailable):
            await worker._dispatch_once()
        assert [j.id for j in lost] == [job_id] and spawned == []
        assert (await store.get_job(job_id))["status"] == "running"  # for nobody

        await worker._dispatch_once()  # the claim after it says what this process runs: nothing
        assert keeps[1] == []
        assert spawned == [f"job.{job_id}"] and worker._running[job_id].attempts == 2

        await worker._dispatch_once()  # a claim that answered: the next one skips the scan
        assert keeps[2] is None
        assert (await store.get_job(job_id))["attempts"] == 2  # the job it runs stays its own
    finally:
        store.close()


def _config(tmp_path, level: str) -> str:
    return (f'log_level = "{level}"\n[server]\nport = 0\naccess_keys = ["reload-level-key-0001"]\n'
            f'[database]\npath = "{tmp_path / "r.db"}"\n'
            '[wordpress]\nurl = "http://127.0.0.1:9"\nusername = "bridge"\napplication_password = "x"\n')


async def test_a_reload_sets_the_level_of_the_workers_job_lines(tmp_path):
    """The worker's job lines come from a logger bound once (not per job): a SIGHUP's new level
    reaches them, as it reaches the intake's."""
    path = tmp_path / "bridge.toml"
    path.write_text(_config(tmp_path, "info"))
    stream = io.StringIO()
    configure("info", "json", stream=stream)
    bridge = Bridge(load_settings(path), config_path=path)
    await bridge.start()
    try:
        bridge.worker.log.info("job.done", probe=1)
        path.write_text(_config(tmp_path, "warning"))
        assert await bridge.reload()
        bridge.worker.log.info("job.done", probe=2)
        bridge.worker.log.warning("job.retry_scheduled", probe=3)
        bridge._intake.log.info("delivery.duplicate", probe=4)
    finally:
        await bridge.stop()
        structlog.reset_defaults()
        configure("info", "console")
    probes = [e["probe"] for e in map(json.loads, stream.getvalue().splitlines()) if "probe" in e]
    assert probes == [1, 3]
