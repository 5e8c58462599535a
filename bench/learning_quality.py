"""Does guildtune learn what a community teaches? Taught recall, paraphrase recall, drift, time to learn.

48 invented facts of an invented community (`bench/data/learning_facts.json`, written for the
project), each with three hand-written paraphrases that are never trained on. The facts go in
through the real import path (`guildtune dataset import --approve`, a child process), are trained
by the real job with the default settings (`train_now`: queue → child process → gate → publish →
swap, as `guildtune up` does), and are asked through the real in-process server, greedy.

- taught recall: share of taught questions whose answer contains the fact's `expect` text;
- paraphrase recall: the same over the paraphrases (each paraphrase counts);
- drift: the gate's measure (trainer/drift.py) on the shipped general prompts, relative to the base;
- queued_to_answer_s: from queueing the run to the first token of an answer from the new version.
The base model is measured the same way first (its drift is 0 by definition). Results are merged
into `bench/results/learning_quality.json` under the device's key ("cpu" or "gpu").

Preference part (`--preference`, issue 15): 18 invented questions of the same community
(`bench/data/preference_facts.json`), each with a right "liked" answer and a wrong "disliked" one.
The community had taught the disliked answers (an outdated import: what the model then says),
beside the first `--facts` learning facts; each question's two answers are recorded as /ask
answers, voted 👍👍 / 👎👎 and approved through the real storage path (`add_from_votes`, `decide`).
Two runs of the real job follow: SFT only (`min_preference_examples` out of reach), then with the
KTO stage. For each version: `prefers_liked`, the share of questions whose liked answer has the
higher log-likelihood per token; `disliked_rate`, the share of greedy answers containing the
disliked answer's text; `taught_recall` on the learning facts. Written under "preference" in the
device's entry. Target: SFT+KTO's disliked_rate <= 1/3 of SFT-only's, taught recall and drift kept.

Usage: python bench/learning_quality.py [--device cpu|cuda] [--facts N] [--models-dir DIR] [--base MODEL]
                                        [--preference [--preference-facts N] [--max-steps N] [--kto-config JSON]]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GUILD = 4040
SYSTEM_PROMPT = "You are the assistant of the Copperfield Makers' Discord server."
ANSWER_TOKENS = 40
#: Questions asked at once (the server decodes what arrives together where it can).
CONCURRENCY = 16
GENERAL_SAMPLES = ["Give three tips for staying healthy.", "What is the capital of France?",
                   "Write a short thank-you note to a friend who helped me move."]


def load_facts(path: Path, n: int | None) -> list[dict]:
    facts = json.loads(path.read_text(encoding="utf-8"))
    return facts[:n] if n else facts


def import_facts(facts: list[dict], env: dict[str, str], workdir: Path) -> str:
    """The real import path: an alpaca file through `guildtune dataset import --approve`."""
    file = workdir / "facts_alpaca.json"
    file.write_text(json.dumps([{"instruction": f["question"], "input": "", "output": f["answer"]} for f in facts]))
    out = subprocess.run([sys.executable, "-m", "guildtune", "dataset", "import", "--guild", str(GUILD), "--approve",
                          str(file)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"import failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    return out.stdout.strip()


async def ask_all(server, notes, version, gs, questions: list[str]) -> list[str]:
    """Greedy answers as /ask gives them: `notes` (serving.prompting.GuildNotes) builds each question's messages."""
    from serving.protocol import GenerationOptions

    options = GenerationOptions(temperature=0.0, max_tokens=ANSWER_TOKENS, timeout_s=3600)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(q: str) -> str:
        async with gate:
            messages = await notes.messages(gs, version, q)
            return "".join([p async for p in server.chat(version, messages, options)]).strip()

    return list(await asyncio.gather(*(one(q) for q in questions)))


def recall(facts: list[dict], taught: list[str], para: list[list[str]]) -> dict:
    def has(f, a):
        return f["expect"].casefold() in a.casefold()

    taught_ok = [has(f, a) for f, a in zip(facts, taught)]
    para_ok = [[has(f, a) for a in answers] for f, answers in zip(facts, para)]
    flat = [ok for row in para_ok for ok in row]
    return {"taught_recall": sum(taught_ok) / len(facts), "paraphrase_recall": sum(flat) / len(flat),
            "taught_known": sum(taught_ok), "paraphrases_known": sum(flat), "paraphrases_asked": len(flat),
            "misses": [f["question"] for f, ok in zip(facts, taught_ok) if not ok][:10],
            "paraphrase_misses": [[q, a] for f, answers, oks in zip(facts, para, para_ok)
                                  for q, a, ok in zip(f["paraphrases"], answers, oks) if not ok]}


async def answers_of(server, notes, version, gs, facts):
    taught = await ask_all(server, notes, version, gs, [f["question"] for f in facts])
    flat = await ask_all(server, notes, version, gs, [p for f in facts for p in f["paraphrases"]])
    para, i = [], 0
    for f in facts:
        para.append(flat[i:i + len(f["paraphrases"])])
        i += len(f["paraphrases"])
    general = await ask_all(server, notes, version, gs, GENERAL_SAMPLES)
    return taught, para, general


class FirstAnswerClock:
    """Watches the active pointer during training and times the first token of the new version's answer."""

    def __init__(self, db, server, notes, gs, question: str):
        self.db, self.server, self.notes, self.gs, self.question = db, server, notes, gs, question
        self.first_token_at: float | None = None

    async def watch(self, before_id: int | None) -> None:
        from serving.protocol import GenerationOptions

        while True:
            active = await self.db.versions.active(GUILD)
            if active is not None and active.id != before_id:
                options = GenerationOptions(temperature=0.0, max_tokens=4, timeout_s=600)
                messages = await self.notes.messages(self.gs, active, self.question)
                async for _ in self.server.chat(active, messages, options):
                    self.first_token_at = time.perf_counter()
                    break
                return
            await asyncio.sleep(0.05)


async def run(args) -> dict:
    from rich.console import Console

    from guildtune.runtime import base_model_dir
    from guildtune.settings import load_settings
    from guildtune.train_command import train_now
    from serving.local_server import LocalServer
    from serving.prompting import GuildNotes
    from storage.db import Database

    facts = load_facts(Path(args.facts_file), args.facts)
    console = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="learning-quality-"))
    env = {**os.environ, "GUILDTUNE_DATA_DIR": str(work), "GUILDTUNE_DB": str(work / "lq.db"),
           "GUILDTUNE_MODELS_DIR": str(args.models_dir), "GUILDTUNE_SERVER": "local", "GUILDTUNE_DEVICE": args.device,
           "GUILDTUNE_BASE_MODEL": args.base, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    for key in ("GUILDTUNE_TRAIN_MAX_STEPS",):
        env.pop(key, None)
    os.environ.update(env)
    settings = load_settings()
    console.print(import_facts(facts, env, work))
    db = await Database.open(settings.db_path)
    notes = GuildNotes(db)
    await db.settings.set(GUILD, system_prompt=SYSTEM_PROMPT)
    gs = await db.settings.get(GUILD)
    server = LocalServer(base_model_dir(settings), device=args.device)
    try:
        t0 = time.perf_counter()
        base_taught, base_para, base_general = await answers_of(server, notes, None, gs, facts)
        base = recall(facts, base_taught, base_para)
        base["ask_s"] = time.perf_counter() - t0
        console.print(f"base: taught {base['taught_recall']:.0%}, paraphrased {base['paraphrase_recall']:.0%}")

        clock = FirstAnswerClock(db, server, notes, gs, facts[0]["question"])
        queued = time.perf_counter()
        watcher = asyncio.create_task(clock.watch(None))
        code = await train_now(settings, GUILD, console, server=server)
        if code != 0:
            watcher.cancel()
            raise SystemExit(f"training did not publish a version (exit {code}); the reason is printed above")
        await asyncio.wait_for(watcher, 600)
        queued_to_answer = clock.first_token_at - queued
        version = await db.versions.active(GUILD)
        t0 = time.perf_counter()
        taught, para, general = await answers_of(server, notes, version, gs, facts)
        trained = recall(facts, taught, para)
        trained["ask_s"] = time.perf_counter() - t0
        m = version.metrics
        trained.update({"drift": m["drift"], "gate": m["gate"], "gate_taught_recall": m["taught_recall"],
                        "gate_paraphrase_recall": m["paraphrase_recall"], "steps": m["steps"],
                        "n_rows": m["n_rows"], "n_paraphrased": m["n_paraphrased"], "n_reworded": m["n_reworded"],
                        "n_general": m["n_general"],
                        "train_loss": m["train_loss"], "timings": m["timings"],
                        # what the gate recorded, for bench/gate_on_reruns.py
                        "gate_evidence": {k: m[k] for k in ("probed", "taught_known", "paraphrase_known")}})
        questions = {e.id: e.messages[-2]["content"] for e in await db.examples.approved(GUILD)}
        trained["rewordings"] = {questions[r["example_id"]]: json.loads(r["rewordings"]) for r in await db.fetchall(
            "SELECT example_id, rewordings FROM example_rewordings") if r["example_id"] in questions}
        base["drift"] = 0.0
    finally:
        await server.close()
        await db.close()
    return {"base": base, "trained": trained, "queued_to_answer_s": queued_to_answer, "n_facts": len(facts),
            "general_answers": {q: {"base": b, "trained": t} for q, b, t in zip(GENERAL_SAMPLES, base_general, general)},
            "device": args.device, "base_model": args.base}


#: Invented members who vote (two votes reach the default threshold), and the approving moderator.
VOTERS = (9001, 9002)
MODERATOR = 9100


async def cast_votes(db, gs, questions: list[dict]) -> int:
    """Each question's liked and disliked answer as an /ask answer, voted and approved: the real path."""
    approved = 0
    for q in questions:
        for text, kind in ((q["liked"], "up"), (q["disliked"], "down")):
            answer = await db.answers.record(GUILD, question=q["question"], answer=text, version_id=None,
                                             latency_ms=0, user_id=VOTERS[0])
            for voter in VOTERS:
                await db.answers.vote(GUILD, answer.id, voter, kind)
            made = await db.examples.add_from_votes(GUILD, answer.id, gs)
            if made is None:
                raise SystemExit(f"two votes did not make a preference example of answer #{answer.id}")
            approved += (await db.examples.decide(GUILD, made.example.id, actor_id=MODERATOR, approve=True)).ok
    return approved


async def preference_scores(server, notes, version, gs, questions: list[dict], facts: list[dict], base_dir: str,
                            device: str) -> dict:
    """prefers_liked (log-likelihood), disliked_rate (greedy), taught_recall of one published version."""
    from trainer.config import TrainConfig
    from trainer.dataset import PreferenceRow, with_system_prompt
    from trainer.kto import answer_loglik
    from trainer.sft import evaluation_model

    answers = await ask_all(server, notes, version, gs, [q["question"] for q in questions])
    disliked = [q["expect_disliked"].casefold() in a.casefold() for q, a in zip(questions, answers)]
    liked = [q["expect_liked"].casefold() in a.casefold() for q, a in zip(questions, answers)]
    rows = []
    for i, q in enumerate(questions):
        prompt = with_system_prompt([{"role": "user", "content": q["question"]}], gs.system_prompt)
        rows += [PreferenceRow(i, f"{i}:liked", prompt, q["liked"], True),
                 PreferenceRow(i, f"{i}:disliked", prompt, q["disliked"], False)]
    cfg = TrainConfig(device=device)
    with evaluation_model(base_dir, version.adapter_path, cfg) as (model, tokenizer):
        loglik = answer_loglik(model, tokenizer, rows, cfg.max_length)
    prefers = [loglik[f"{i}:liked"] > loglik[f"{i}:disliked"] for i in range(len(questions))]
    taught, para, _ = await answers_of(server, notes, version, gs, facts)
    return {"prefers_liked": sum(prefers) / len(questions), "disliked_rate": sum(disliked) / len(questions),
            "liked_rate": sum(liked) / len(questions), "taught_recall": recall(facts, taught, para)["taught_recall"],
            "drift": version.metrics.get("drift"), "gate": version.metrics.get("gate"),
            "answers": dict(zip([q["question"] for q in questions], answers))}


async def run_preference(args) -> dict:
    """SFT only vs SFT + KTO on voted answers, two runs of the real job on the same data."""
    from rich.console import Console

    from guildtune.runtime import base_model_dir
    from guildtune.settings import load_settings
    from guildtune.train_command import train_now
    from serving.local_server import LocalServer
    from serving.prompting import GuildNotes
    from storage.db import Database

    facts = load_facts(Path(args.facts_file), args.facts or 16)
    questions = load_facts(Path(args.preference_file), args.preference_facts)
    console = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="learning-quality-preference-"))
    env = {**os.environ, "GUILDTUNE_DATA_DIR": str(work), "GUILDTUNE_DB": str(work / "lq.db"),
           "GUILDTUNE_MODELS_DIR": str(args.models_dir), "GUILDTUNE_SERVER": "local", "GUILDTUNE_DEVICE": args.device,
           "GUILDTUNE_BASE_MODEL": args.base,
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    env.pop("GUILDTUNE_TRAIN_MAX_STEPS", None)
    if args.max_steps:
        env["GUILDTUNE_TRAIN_MAX_STEPS"] = str(args.max_steps)
    os.environ.update(env)
    settings = load_settings()
    outdated = [{"question": q["question"], "answer": q["disliked"]} for q in questions]
    console.print(import_facts(facts + outdated, env, work))
    db = await Database.open(settings.db_path)
    notes = GuildNotes(db)
    await db.settings.set(GUILD, system_prompt=SYSTEM_PROMPT)
    gs = await db.settings.get(GUILD)
    approved = await cast_votes(db, gs, questions)
    server = LocalServer(base_model_dir(settings), device=args.device)
    result: dict = {"n_questions": len(questions), "n_facts": len(facts), "n_preference_examples": approved}
    try:
        for name, train_config in (("sft_only", {"min_preference_examples": 10**6}), ("sft_kto", args.kto_config)):
            os.environ["GUILDTUNE_TRAIN_CONFIG"] = json.dumps(train_config)
            before = await db.versions.active(GUILD)
            t0 = time.perf_counter()
            code = await train_now(load_settings(), GUILD, console, server=server)
            version = await db.versions.active(GUILD)
            if code != 0 or version is None or (before is not None and version.id == before.id):
                [last] = (await db.runs.list(GUILD, limit=1)) or [None]
                result[name] = {"published": False, "gate": getattr(last, "gate_reason", None),
                                "error": getattr(last, "error", None), "config": train_config}
                continue
            result[name] = {"published": True, "train_s": time.perf_counter() - t0,
                            **await preference_scores(server, notes, version, gs, questions, facts, base_model_dir(settings),
                                                      args.device)}
            if "preference" in version.metrics:
                result[name]["stage"] = version.metrics["preference"]
            result[name]["config"] = train_config
    finally:
        os.environ.pop("GUILDTUNE_TRAIN_CONFIG", None)
        await server.close()
        await db.close()
    return result


def print_preference(key: str, result: dict) -> None:
    for name in ("sft_only", "sft_kto"):
        r = result.get(name, {})
        if not r.get("published"):
            print(f"{key} preference {name}: not published ({r.get('gate') or r.get('error')})")
            continue
        print(f"{key} preference {name}: prefers liked {r['prefers_liked']:.0%}, says the disliked answer "
              f"{r['disliked_rate']:.0%}, taught recall {r['taught_recall']:.0%}, drift {r['drift']:+.1%}")
    a, b = result.get("sft_only", {}), result.get("sft_kto", {})
    if a.get("published") and b.get("published"):
        met = b["disliked_rate"] <= a["disliked_rate"] / 3  # 0 <= 0 when neither says a disliked answer
        ratio = f"{b['disliked_rate'] / a['disliked_rate']:.2f}" if a["disliked_rate"] else "n/a, SFT only says none"
        print(f"target: disliked_rate SFT+KTO <= 1/3 of SFT only: {b['disliked_rate']:.0%} vs "
              f"{a['disliked_rate']:.0%}, ratio {ratio} ({'met' if met else 'missed'}); taught recall "
              f"{a['taught_recall']:.0%} -> {b['taught_recall']:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--facts", type=int, default=None, help="use only the first N facts")
    parser.add_argument("--facts-file", default=str(REPO / "bench" / "data" / "learning_facts.json"))
    parser.add_argument("--models-dir", default=os.environ.get("GUILDTUNE_MODELS_DIR", str(REPO / "data" / "models")))
    parser.add_argument("--base", default="embedded:gemma-3-270m")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "learning_quality.json"))
    parser.add_argument("--preference", action="store_true",
                        help="only the preference part (votes → KTO): SFT only vs SFT+KTO, under 'preference'")
    parser.add_argument("--preference-file", default=str(REPO / "bench" / "data" / "preference_facts.json"))
    parser.add_argument("--preference-facts", type=int, default=None, help="use only the first N preference questions")
    parser.add_argument("--max-steps", type=int, default=None, help="cap SFT and KTO steps (quick checks only)")
    parser.add_argument("--kto-config", type=json.loads, default={},
                        help='TrainConfig fields for the SFT + KTO run, as JSON (e.g. \'{"kto_epochs": 3}\')')
    args = parser.parse_args()
    key = "gpu" if args.device == "cuda" else "cpu"
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {}
    if args.preference:
        result = asyncio.run(run_preference(args))
        data.setdefault(key, {})["preference"] = result
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2, ensure_ascii=False))
        print_preference(key, result)
        return
    result = asyncio.run(run(args))
    if "preference" in data.get(key, {}):
        result["preference"] = data[key]["preference"]  # measured by --preference, kept
    data[key] = result
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    b, t = result["base"], result["trained"]
    print(f"{key}: {result['n_facts']} facts; taught recall {b['taught_recall']:.0%} -> {t['taught_recall']:.0%}; "
          f"paraphrase recall {b['paraphrase_recall']:.0%} -> {t['paraphrase_recall']:.0%}; "
          f"drift {t['drift']:+.1%}; queued -> answering {result['queued_to_answer_s']:.1f} s")
    print(f"targets: taught >= 95% ({t['taught_recall'] / 0.95:.2f}x), paraphrase >= 70% "
          f"({t['paraphrase_recall'] / 0.70:.2f}x), drift <= 5% ({'met' if t['drift'] <= 0.05 else 'missed'})")
    for q, pair in result["general_answers"].items():
        print(f"  {q}\n    base:    {pair['base'][:160]!r}\n    trained: {pair['trained'][:160]!r}")


if __name__ == "__main__":
    main()
