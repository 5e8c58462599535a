-- V6: the base model's rewordings of an example's question (trainer/rewording.py), kept so that a
-- retrain asks the base only about new questions. They are community text: they go with their
-- example (deleted with it, wiped with it by /forget), and `question_hash` names the question they
-- reword, so an edited question is reworded again. `base` is the base model's fingerprint.
CREATE TABLE example_rewordings (
    example_id    INTEGER NOT NULL REFERENCES examples(id) ON DELETE CASCADE,
    base          TEXT    NOT NULL,
    question_hash TEXT    NOT NULL,
    rewordings    TEXT    NOT NULL,               -- JSON [str]
    PRIMARY KEY (example_id, base)
);
