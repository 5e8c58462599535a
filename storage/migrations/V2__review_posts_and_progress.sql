-- V2: the review channel's posts (so ✅/❌ reactions find their example) and the
-- training progress message the bot keeps editing.
CREATE TABLE review_posts (
    guild_id   INTEGER NOT NULL,
    example_id INTEGER NOT NULL REFERENCES examples(id),
    channel_id INTEGER NOT NULL,
    message_id INTEGER NOT NULL PRIMARY KEY,
    created_at REAL    NOT NULL
);
CREATE INDEX review_posts_example ON review_posts(guild_id, example_id);

ALTER TABLE training_runs ADD COLUMN progress_message_id INTEGER;
ALTER TABLE answers ADD COLUMN message_id INTEGER;
