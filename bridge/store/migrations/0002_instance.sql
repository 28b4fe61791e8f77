-- A random identity per database, so idempotency keys sent to WordPress (request_id) never
-- collide between two bridges, or between a bridge and its own earlier, deleted database.
CREATE TABLE instance (id TEXT NOT NULL);
INSERT INTO instance (id) SELECT lower(hex(randomblob(8)))
