-- Migration 1: the whole schema of crkvol's key service state in PostgreSQL.
-- crkvol_schema, pgdb's own record of the version, is created by pgdb before any migration.
-- Records are Go-encoded JSON kept byte-exact (json, not jsonb: they may hold \u0000).

-- Leader leases: which replica runs the scheduled work (pgdb.Lead), timed by the database clock.
CREATE TABLE crkvol_leases (
	name    text PRIMARY KEY,
	holder  text NOT NULL,
	expires timestamptz NOT NULL
);

-- crk: one row per service instance, with the counters its mutations lock and advance.
CREATE TABLE crk_instances (
	id           text PRIMARY KEY,
	check_value  bytea NOT NULL,
	events_seq   bigint NOT NULL DEFAULT 0,
	events_nanos bigint NOT NULL DEFAULT 0,
	feed_seq     bigint NOT NULL DEFAULT 0,
	feed_pruned  bigint NOT NULL DEFAULT 0,
	created      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crk_keys (
	instance text NOT NULL REFERENCES crk_instances (id) ON DELETE CASCADE,
	id       text NOT NULL,
	record   json NOT NULL,
	PRIMARY KEY (instance, id)
);

CREATE TABLE crk_registrations (
	instance text NOT NULL REFERENCES crk_instances (id) ON DELETE CASCADE,
	key_id   text NOT NULL,
	crn      text NOT NULL,
	record   json NOT NULL,
	PRIMARY KEY (instance, key_id, crn)
);

CREATE TABLE crk_events (
	instance text NOT NULL REFERENCES crk_instances (id) ON DELETE CASCADE,
	seq      bigint NOT NULL,
	nanos    bigint NOT NULL,
	key_id   text NOT NULL,
	action   text NOT NULL,
	record   json NOT NULL,
	PRIMARY KEY (instance, seq)
);
CREATE INDEX crk_events_key ON crk_events (instance, key_id, seq);

CREATE TABLE crk_feed (
	instance text NOT NULL REFERENCES crk_instances (id) ON DELETE CASCADE,
	seq      bigint NOT NULL,
	time     timestamptz NOT NULL,
	record   json NOT NULL,
	PRIMARY KEY (instance, seq)
);

-- crk/kpapi: tenants (service instances), their API keys (hashes) and bearer tokens (hashes).
CREATE TABLE kp_instances (
	id         text PRIMARY KEY,
	name       text NOT NULL,
	created    timestamptz NOT NULL DEFAULT now(),
	is_default boolean NOT NULL DEFAULT false
);
-- At most one default instance.
CREATE UNIQUE INDEX kp_instances_one_default ON kp_instances (is_default) WHERE is_default;

CREATE TABLE kp_api_keys (
	hash     text PRIMARY KEY,
	instance text NOT NULL REFERENCES kp_instances (id) ON DELETE CASCADE,
	created  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kp_tokens (
	hash     bytea PRIMARY KEY,
	instance text NOT NULL REFERENCES kp_instances (id) ON DELETE CASCADE,
	key_hash text NOT NULL REFERENCES kp_api_keys (hash) ON DELETE CASCADE,
	expires  timestamptz NOT NULL
);
CREATE INDEX kp_tokens_key ON kp_tokens (key_hash);
CREATE INDEX kp_tokens_expires ON kp_tokens (expires);
