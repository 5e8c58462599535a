-- V1: examples, their audit, answers and feedback, training runs, model versions, guild settings.
-- Tables come after the ones they reference (PostgreSQL checks references when a table is created).
CREATE TABLE training_runs (
    id                 INTEGER PRIMARY KEY,
    guild_id           INTEGER NOT NULL,
    status             TEXT    NOT NULL CHECK (status IN ('queued','running','succeeded','failed','gated','cancelled')),
    trigger            TEXT    NOT NULL,
    requested_by       INTEGER,
    n_train            INTEGER NOT NULL DEFAULT 0,
    n_eval             INTEGER NOT NULL DEFAULT 0,
    step               INTEGER NOT NULL DEFAULT 0,
    total_steps        INTEGER NOT NULL DEFAULT 0,
    loss               REAL,
    eta_s              REAL,
    eval_loss          REAL,
    baseline_eval_loss REAL,
    metrics            TEXT    NOT NULL DEFAULT '{}',
    error              TEXT,
    gate_reason        TEXT,
    cancel_requested   INTEGER NOT NULL DEFAULT 0,
    pid                INTEGER,
    loss_history       TEXT    NOT NULL DEFAULT '[]',
    created_at         REAL    NOT NULL,
    started_at         REAL,
    finished_at        REAL
);
CREATE INDEX training_runs_guild ON training_runs(guild_id, id);
CREATE INDEX training_runs_status ON training_runs(status, id);

CREATE TABLE model_versions (
    id           INTEGER PRIMARY KEY,
    guild_id     INTEGER NOT NULL,
    number       INTEGER NOT NULL,
    run_id       INTEGER REFERENCES training_runs(id),
    tag          TEXT,
    adapter_path TEXT    NOT NULL,
    base_model   TEXT    NOT NULL,
    metrics      TEXT    NOT NULL DEFAULT '{}',
    status       TEXT    NOT NULL CHECK (status IN ('ready','active','retired','removed')),
    n_examples   INTEGER NOT NULL DEFAULT 0,
    created_at   REAL    NOT NULL,
    activated_at REAL,
    UNIQUE (guild_id, number)
);

CREATE TABLE active_versions (
    guild_id     INTEGER PRIMARY KEY,
    version_id   INTEGER NOT NULL REFERENCES model_versions(id),
    activated_at REAL    NOT NULL
);

CREATE TABLE answers (
    id          INTEGER PRIMARY KEY,
    guild_id    INTEGER NOT NULL,
    channel_id  INTEGER,
    user_id     INTEGER,
    question    TEXT    NOT NULL,
    answer      TEXT    NOT NULL,
    version_id  INTEGER REFERENCES model_versions(id),
    latency_ms  INTEGER NOT NULL,
    created_at  REAL    NOT NULL
);
CREATE INDEX answers_guild ON answers(guild_id, id);

CREATE TABLE examples (
    id                 INTEGER PRIMARY KEY,
    guild_id           INTEGER NOT NULL,
    messages           TEXT    NOT NULL,               -- JSON [{role, content}]
    source             TEXT    NOT NULL CHECK (source IN ('teach','reaction','context_menu','correction','import')),
    source_message_ids TEXT    NOT NULL DEFAULT '[]',  -- JSON [int]
    author_id          INTEGER,
    status             TEXT    NOT NULL CHECK (status IN ('pending','approved','rejected','deleted')),
    content_hash       TEXT    NOT NULL,
    answer_id          INTEGER REFERENCES answers(id),
    created_at         REAL    NOT NULL,
    updated_at         REAL    NOT NULL
);
CREATE UNIQUE INDEX examples_guild_hash ON examples(guild_id, content_hash);
CREATE INDEX examples_guild_status ON examples(guild_id, status, id);
CREATE INDEX examples_guild_author ON examples(guild_id, author_id);

CREATE TABLE example_events (
    id          INTEGER PRIMARY KEY,
    guild_id    INTEGER NOT NULL,
    example_id  INTEGER NOT NULL REFERENCES examples(id),
    actor_id    INTEGER,
    action      TEXT    NOT NULL,
    before      TEXT,
    after       TEXT,
    reason      TEXT,
    created_at  REAL    NOT NULL
);
CREATE INDEX example_events_example ON example_events(guild_id, example_id, id);

CREATE TABLE example_votes (
    example_id INTEGER NOT NULL REFERENCES examples(id),
    user_id    INTEGER NOT NULL,
    created_at REAL    NOT NULL,
    PRIMARY KEY (example_id, user_id)
);

CREATE TABLE feedback (
    id          INTEGER PRIMARY KEY,
    guild_id    INTEGER NOT NULL,
    answer_id   INTEGER NOT NULL REFERENCES answers(id),
    user_id     INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('up','down','correction')),
    example_id  INTEGER REFERENCES examples(id),
    created_at  REAL    NOT NULL
);
CREATE UNIQUE INDEX feedback_one_vote ON feedback(answer_id, user_id) WHERE kind IN ('up','down');

CREATE TABLE guild_settings (
    guild_id INTEGER PRIMARY KEY,
    data     TEXT    NOT NULL DEFAULT '{}'   -- JSON of GuildSettings fields that differ from defaults
);
