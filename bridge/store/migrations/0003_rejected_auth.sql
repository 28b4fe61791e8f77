-- How a rejected delivery was authenticated (key scope, and the Standard Webhooks headers when the
-- connection checks signatures), so that a replay re-checks what intake checked.
ALTER TABLE rejected ADD COLUMN auth TEXT
