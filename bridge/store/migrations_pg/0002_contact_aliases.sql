-- Links learned between a contact's email (case-folded) and its CRM contact ID, per connection
-- (SQLite's migration 0006, bridge.core.contacts). A NULL contact_id marks an email seen with two
-- IDs (contested): it is never linked.
CREATE TABLE contact_aliases (
    connection  TEXT NOT NULL,
    email       TEXT NOT NULL,
    contact_id  TEXT,
    learned_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (connection, email)
);
CREATE INDEX contact_aliases_contact ON contact_aliases (connection, contact_id)
