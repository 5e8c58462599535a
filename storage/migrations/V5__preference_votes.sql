-- V5: votes under /ask answers become preference examples (issue 15).
-- A preference example is a row of `examples` with a `label`: its last turn is the model's answer,
-- 'desirable' (net 👍) or 'undesirable' (net 👎); demonstrations (everything else) keep NULL.
-- One table keeps /review, /forget, stats and the audit working for it unchanged. The V1 CHECK on
-- `source` cannot be widened portably (SQLite cannot alter a CHECK, and rebuilding `examples` breaks
-- the foreign keys that point at it, on SQLite and PostgreSQL alike), so a vote example is stored
-- with source 'reaction' (members' reactions under a message, which votes are) and storage reports
-- it as source 'vote' (storage/examples.py: `_row_to_example`).
ALTER TABLE examples ADD COLUMN label TEXT CHECK (label IN ('desirable', 'undesirable'));
-- The same answer never makes two preference examples, whatever the votes do later.
CREATE UNIQUE INDEX examples_one_preference_per_answer ON examples(guild_id, answer_id) WHERE label IS NOT NULL;
-- Whether the voter was a moderator when voting (their votes may count more: guild setting).
ALTER TABLE feedback ADD COLUMN moderator INTEGER NOT NULL DEFAULT 0;
