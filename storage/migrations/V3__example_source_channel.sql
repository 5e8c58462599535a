-- V3: where an example's source messages are, so review cards can link to them.
ALTER TABLE examples ADD COLUMN source_channel_id INTEGER;
