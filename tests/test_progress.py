"""The training progress message: its text and loss curve, and the reporter that posts and edits it
in the review channel while the trainer (simulated here by writing the run rows) works."""
from __future__ import annotations

import asyncio
import io
import time

import pytest
from matplotlib import image as mpimg

from bot.progress import ProgressReporter, estimate_eta, final_text, render_loss_curve, running_text
from storage.records import ModelVersion, TrainingRun
from tests.bot_harness import start_world

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(**fields) -> TrainingRun:
    base = dict(id=7, guild_id=1, status="running", trigger="retrain", requested_by=None, n_train=40, n_eval=5,
                step=30, total_steps=100, loss=1.23456, eta_s=130.0, eval_loss=None, baseline_eval_loss=None,
                metrics={}, error=None, gate_reason=None, cancel_requested=False, pid=None,
                loss_history=[[10, 2.0], [20, 1.6], [30, 1.23456]], created_at=0.0, started_at=1000.0,
                finished_at=None)
    return TrainingRun(**{**base, **fields})


def version(number: int, vid: int | None = None) -> ModelVersion:
    return ModelVersion(id=vid or number, guild_id=1, number=number, run_id=7, tag=None, adapter_path="/x",
                        base_model="/b", metrics={}, status="active", n_examples=40, created_at=0.0)


def test_running_text_has_bar_step_loss_and_eta():
    text = running_text(run())
    assert "Training run #7" in text and "retrain" in text
    assert "▰" * 6 + "▱" * 14 + " 30%" in text
    assert "step 30/100" in text and "loss 1.2346" in text and "ETA 2m 10s" in text
    assert "Learning all 40 approved examples" in text
    assert "Preparing" in running_text(run(step=0, total_steps=0, loss=None))


def test_eta_falls_back_to_elapsed_time_per_step():
    assert estimate_eta(run(eta_s=None, step=25, total_steps=100, started_at=1000.0), now=1050.0) == 150.0
    assert estimate_eta(run(eta_s=None, step=0)) is None


SCORES = {"taught_recall": 0.9, "paraphrase_recall": 0.7, "probed": [f"k{i}" for i in range(10)],
          "taught_known": [f"k{i}" for i in range(9)], "paraphrase_known": [f"k{i}" for i in range(7)],
          "drift": 0.031, "previous": {"name": "v3", "taught_recall": 0.8, "paraphrase_recall": 0.5}}


def test_final_text_for_every_outcome():
    done = dict(finished_at=1300.0, step=100, metrics=SCORES)
    ok = final_text(run(status="succeeded", **done), version(4), version(4))
    assert "succeeded: this server now answers with **v4**" in ok
    assert ("Answers 9/10 taught questions, 7/10 asked differently, drift +3.1% from the base on general "
            "questions (v3: 80% and 50%).") in ok
    assert "100/100 steps in 5m 00s" in ok

    gated = final_text(run(status="gated", gate_reason="eval loss 1.31 is worse than v3's 1.25", **done),
                       None, version(3))
    assert "was not published: eval loss 1.31 is worse than v3's 1.25" in gated
    assert "Answers still come from v3" in gated

    failed = final_text(run(status="failed", error="CUDA out of memory " + "x" * 3000), None, None)
    assert "failed: CUDA out of memory" in failed and "Answers still come from the base model" in failed
    assert "(cut; the trainer's log has the rest)" in failed and len(failed) < 2000

    assert "was cancelled" in final_text(run(status="cancelled"), None, None)


def test_loss_curve_is_a_png_of_the_history():
    png = render_loss_curve(run(status="succeeded", eval_loss=1.1, baseline_eval_loss=1.25))
    assert png.startswith(PNG_MAGIC)
    pixels = mpimg.imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (320, 600)  # 6 x 3.2 inches at 100 dpi
    assert render_loss_curve(run(loss_history=[])) is None


@pytest.fixture
def fast_progress(monkeypatch):
    monkeypatch.setattr(ProgressReporter, "POLL_S", 0.05)
    monkeypatch.setattr(ProgressReporter, "MIN_EDIT_INTERVAL_S", 0.5)


async def eventually(read, check, timeout=5.0):
    """Poll `await read()` until `check` holds (the bot writes the db right after Discord answers)."""
    deadline = time.monotonic() + timeout
    while not check(value := await read()):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def next_in_review(world, timeout=5.0):
    return await world.fake.next_sent(timeout, channel=world.review_channel)


async def test_progress_message_is_posted_edited_and_finalised_with_a_loss_curve(tmp_path, fast_progress):
    async with start_world(tmp_path) as world:
        await world.configure(review_channel_id=world.review_channel.id)
        db, gid = world.db, world.guild.id
        queued, _, _ = await db.runs.enqueue(gid, trigger="retrain", requested_by=world.mod.id)
        await asyncio.sleep(0.2)
        assert not world.fake.sent_in(world.review_channel)  # a queued run shows nothing yet

        t_claimed = time.monotonic()
        running = await db.runs.claim_next()  # the trainer picks it up
        posted = await next_in_review(world)
        assert posted.kind == "message" and f"Training run #{running.id}" in posted.content
        assert "Preparing" in posted.content and not posted.pings
        assert await eventually(lambda: db.runs.get(gid, running.id),
                                lambda r: r.progress_message_id == posted.message.id)

        # Progress written faster than the edit interval: one edit, once the interval has passed.
        for step in range(1, 6):
            await db.runs.update(gid, running.id, step=step, total_steps=10, loss=2.0 - step / 10, eta_s=9.0,
                                 n_train=8, n_eval=2, loss_history=[[s, 2.0 - s / 10] for s in range(1, step + 1)])
            await asyncio.sleep(0.05)
        edit = await next_in_review(world)
        assert time.monotonic() - t_claimed >= 0.5
        assert edit.kind == "edit" and edit.message is posted.message
        assert "step 5/10" in edit.content and "loss 1.5000" in edit.content and "▰▰▰▰▰▰▰▰▰▰▱" in edit.content

        # The trainer finishes and publishes v1.
        v1 = await db.versions.create(gid, run_id=running.id, adapter_path=str(tmp_path / "a"), base_model="b",
                                      metrics=SCORES, n_examples=10)
        await db.versions.activate(gid, v1.id)
        await db.runs.update(gid, running.id, step=10, loss=1.0,
                             loss_history=[[s, 2.0 - s / 10] for s in range(1, 11)])
        await db.runs.finish(gid, running.id, "succeeded", metrics=SCORES)
        final = await next_in_review(world)
        while "succeeded" not in final.content:  # an intermediate progress edit may come first
            final = await next_in_review(world)
        assert final.message is posted.message
        assert "now answers with **v1**" in final.content and "Answers 9/10 taught questions" in final.content
        assert [a.filename for a in final.attachments] == ["loss_curve.png"]
        assert final.attachments[0].data.startswith(PNG_MAGIC)

        # A run that fails before training starts still gets its outcome posted.
        second, _, _ = await db.runs.enqueue(gid, trigger="retrain")
        await asyncio.sleep(0.2)
        await db.runs.finish(gid, second.id, "failed", error="training needs at least 2 approved examples")
        failed = await next_in_review(world)
        assert failed.kind == "message" and f"run #{second.id}" in failed.content
        assert "failed: training needs at least 2 approved examples" in failed.content
        assert not failed.attachments  # no loss history, no curve
        await asyncio.sleep(0.3)
        assert len(world.fake.sent_in(world.review_channel)) == 4  # nothing more: finished runs are done


async def test_gated_run_and_a_guild_without_review_channel(tmp_path, fast_progress):
    async with start_world(tmp_path) as world:
        db, gid = world.db, world.guild.id
        await db.runs.enqueue(gid, trigger="schedule")
        run_ = await db.runs.claim_next()
        await db.runs.update(gid, run_.id, step=3, total_steps=3, loss=0.5, loss_history=[[1, 0.9], [3, 0.5]])
        await asyncio.sleep(0.3)
        assert not world.fake.sent  # no review channel: nowhere to post, and no error

        await world.configure(review_channel_id=world.review_channel.id)
        await next_in_review(world)  # the running message, now that there is a channel
        await db.runs.finish(gid, run_.id, "gated", gate_reason="drifted +31.0% from the base model on general prompts",
                             metrics={**SCORES, "drift": 0.31})
        final = await next_in_review(world)
        assert "was not published: drifted +31.0% from the base model on general prompts" in final.content
        assert "Answers still come from the base model" in final.content
        assert final.attachments[0].data.startswith(PNG_MAGIC)
