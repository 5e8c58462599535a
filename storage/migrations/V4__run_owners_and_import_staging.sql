-- V4: who owns a running training run, so every entry point can tell a live run from one whose
-- process died (host, pid and process start time of the claimer; the start time of its job
-- process); versions of runs that did not succeed are never servable; staging tables that let a
-- large import be written in short transactions and then published in one.
ALTER TABLE training_runs ADD COLUMN owner_host TEXT;
ALTER TABLE training_runs ADD COLUMN owner_pid INTEGER;
ALTER TABLE training_runs ADD COLUMN owner_started REAL;
ALTER TABLE training_runs ADD COLUMN pid_started REAL;

UPDATE model_versions SET status = 'removed'
 WHERE status = 'ready'
   AND run_id IN (SELECT id FROM training_runs WHERE status IN ('failed', 'gated', 'cancelled'));

CREATE TABLE example_imports (
    id            INTEGER PRIMARY KEY,
    guild_id      INTEGER NOT NULL,
    owner_host    TEXT    NOT NULL,
    owner_pid     INTEGER NOT NULL,
    owner_started REAL    NOT NULL,
    created_at    REAL    NOT NULL
);

CREATE TABLE example_import_rows (
    import_id    INTEGER NOT NULL REFERENCES example_imports(id),
    seq          INTEGER NOT NULL,                -- order in the imported file
    content_hash TEXT    NOT NULL,
    messages     TEXT    NOT NULL,                -- JSON [{role, content}], validated
    PRIMARY KEY (import_id, seq),
    UNIQUE (import_id, content_hash)
);
