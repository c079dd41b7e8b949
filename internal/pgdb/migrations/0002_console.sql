-- Migration 2: console sessions, and API keys that see several instances (crk/kpapi).

-- The instances an API key's tokens and sessions are accepted for, in the order the key was
-- created with (position 0 first). kp_api_keys.instance stays, holding the first of them, so
-- that what read it before this migration still reads a key's first instance.
CREATE TABLE kp_api_key_instances (
	hash     text NOT NULL REFERENCES kp_api_keys (hash) ON DELETE CASCADE,
	instance text NOT NULL REFERENCES kp_instances (id) ON DELETE CASCADE,
	position integer NOT NULL,
	PRIMARY KEY (hash, instance),
	UNIQUE (hash, position)
);
CREATE INDEX kp_api_key_instances_instance ON kp_api_key_instances (instance);

-- Every key made before this migration sees its one instance.
INSERT INTO kp_api_key_instances (hash, instance, position)
	SELECT hash, instance, 0 FROM kp_api_keys;

-- Console sessions, known by the sha256 of their id; a session goes with its API key.
-- created orders eviction (oldest first); expires is absolute, on the wall clock of the
-- replica that started the session.
CREATE TABLE kp_sessions (
	hash     bytea PRIMARY KEY,
	key_hash text NOT NULL REFERENCES kp_api_keys (hash) ON DELETE CASCADE,
	created  timestamptz NOT NULL,
	expires  timestamptz NOT NULL
);
CREATE INDEX kp_sessions_key ON kp_sessions (key_hash, created);
CREATE INDEX kp_sessions_expires ON kp_sessions (expires);
