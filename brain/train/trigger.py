"""Continuous learning: queue a training job once enough new valid episodes have arrived.

Each closed episode is judged once (the trainer's own quality rules, brain.train.data) and
remembered in `episodes_seen`. When at least `train.trigger_episodes` valid ones are not yet
consumed by a job, and `train.trigger_min_interval_s` has passed since the last triggered job,
one job is made of exactly those episodes. First the local-vs-cloud decision: the job's
estimated time (its steps at the steps/s measured by the last job here, plus decoding) and the
data's size against `train.local_max_minutes` and `train.local_max_data_mb`. Over either, the
episodes are exported with `prepare_cloud_export` into `<state>/exports/cloud-<job>/` and the
job recorded as `exported-for-cloud` with the path and the reason, for the companion to pick
up; under both, the job is queued for this robot.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from brain.train.jobs import PRIORITIES, JobStore, new_job_id

if TYPE_CHECKING:
    from brain.config import Config

log = logging.getLogger(__name__)

CLOSED = ("complete", "incomplete")
DEFAULT_STEPS_PER_S = 25.0  # until a job has measured it on this robot (bench/train.py: 27)
DECODE_S_PER_FRAME = 0.0005  # bench/train.py: 7,200 frames in ~3 s


class Trigger:
    def __init__(self, cfg: Config, store: JobStore) -> None:
        self.cfg = cfg
        self.store = store

    def check(self) -> dict[str, Any] | None:
        """Judge new episodes; queue (or export) one job when due. Returns the job made."""
        self._judge_new()
        t = self.cfg.train
        fresh = self._unconsumed()
        if len(fresh) < t.trigger_episodes:
            return None
        last = self.store.conn.execute(
            "SELECT MAX(created) FROM jobs WHERE origin = 'trigger'").fetchone()[0]
        if last is not None and time.time() - last < t.trigger_min_interval_s:
            return None
        return self._make_job(fresh)

    def _judge_new(self) -> None:
        from brain.rlds.store import list_episodes
        from brain.train.cli import job_settings
        from brain.train.data import judge_episode, quality_of

        episodes = self.cfg.layout.episodes
        seen = {r[0] for r in self.store.conn.execute("SELECT id FROM episodes_seen")}
        quality = quality_of(job_settings(self.cfg))
        for entry in list_episodes(episodes):
            if entry["id"] in seen or entry.get("status") not in CLOSED:
                continue
            verdict, _ = judge_episode(episodes, entry["id"], quality)
            with self.store.transaction() as c:
                c.execute("INSERT OR IGNORE INTO episodes_seen VALUES (?, ?, ?, ?, NULL)",
                          (entry["id"], int(verdict["used"]), verdict["why"], time.time()))

    def _unconsumed(self) -> list[str]:
        rows = self.store.conn.execute("SELECT id FROM episodes_seen WHERE valid = 1 AND "
                                       "consumed_by IS NULL ORDER BY id")
        return [r[0] for r in rows]

    def estimate(self, episode_ids: list[str], max_steps: int) -> tuple[float, float]:
        """(seconds the job would take here, megabytes of episode data)."""
        from brain.rlds.store import read_meta

        row = self.store.conn.execute(
            "SELECT m.steps_per_s FROM metrics m JOIN jobs j ON j.id = m.job WHERE "
            "m.steps_per_s > 0 ORDER BY m.t DESC LIMIT 1").fetchone()
        rate = float(row[0]) if row else DEFAULT_STEPS_PER_S
        frames, size = 0, 0
        for eid in episode_ids:
            d = self.cfg.layout.episodes / eid
            try:
                frames += int(read_meta(d).get("frames") or 0)
            except Exception:  # noqa: BLE001 - a vanished episode counts as nothing
                continue
            size += sum(p.stat().st_size for p in d.iterdir() if p.is_file())
        return max_steps / rate + frames * DECODE_S_PER_FRAME, size / 2**20

    def _make_job(self, fresh: list[str]) -> dict[str, Any]:
        from brain.train.cli import job_settings

        t = self.cfg.train
        settings = job_settings(self.cfg)
        seconds, mb = self.estimate(fresh, settings.max_steps)
        job_id = new_job_id()
        over = []
        if seconds > t.local_max_minutes * 60:
            over.append(f"estimated {seconds / 60:.1f} min > {t.local_max_minutes} min "
                        "(train.local_max_minutes)")
        if mb > t.local_max_data_mb:
            over.append(f"{mb:.0f} MB of episodes > {t.local_max_data_mb} MB "
                        "(train.local_max_data_mb)")
        config = settings.model_dump(mode="json")
        if over:
            job = self._export_for_cloud(job_id, fresh, config, "; ".join(over))
        else:
            job = self.store.insert_job(job_id, config=config, episodes=fresh,
                                        priority=PRIORITIES["normal"], origin="trigger",
                                        reason=f"{len(fresh)} new valid episodes "
                                               f"(estimated {seconds:.0f} s here)")
            self.store.log(job_id, "info", f"queued by the trigger: {len(fresh)} new valid "
                                           f"episodes, estimated {seconds:.0f} s, {mb:.0f} MB")
        with self.store.transaction() as c:
            c.executemany("UPDATE episodes_seen SET consumed_by = ? WHERE id = ?",
                          [(job_id, e) for e in fresh])
        return job

    def _export_for_cloud(self, job_id: str, episodes: list[str], config: dict[str, Any],
                          why: str) -> dict[str, Any]:
        from brain.rlds.export import ExportError, prepare_cloud_export

        out = self.cfg.layout.exports / f"cloud-{job_id}"
        try:
            manifest = prepare_cloud_export(self.cfg.layout.episodes, out,
                                            episode_ids=episodes, origin=self.cfg.export.origin,
                                            isolate=True)
        except ExportError as e:
            job = self.store.insert_job(job_id, config=config, episodes=episodes,
                                        priority=PRIORITIES["normal"], origin="trigger",
                                        status="failed", reason=f"too big for the robot ({why})"
                                        f" and the cloud export failed: {e}")
            self.store.log(job_id, "error", job["reason"])
            return job
        (out / "training_config.json").write_text(json.dumps(config, indent=2))
        job = self.store.insert_job(job_id, config=config, episodes=episodes,
                                    priority=PRIORITIES["normal"], origin="trigger",
                                    status="exported-for-cloud",
                                    reason=f"for the cloud: {why}", export_path=str(out))
        self.store.log(job_id, "info", f"exported {len(manifest.get('episodes', []))} episodes "
                                       f"for the cloud to {out}: {why}")
        return job

