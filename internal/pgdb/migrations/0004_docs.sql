-- Migration 4: crk's documents (crk/docs.go): small JSON records of an instance under a kind
-- and a name — aliases, key rings, instance policies, import tokens. The primary key makes a
-- name unique per instance and kind: of two transactions inserting the same one, one fails.
CREATE TABLE crk_docs (
	instance text NOT NULL REFERENCES crk_instances (id) ON DELETE CASCADE,
	kind     text NOT NULL,
	name     text NOT NULL,
	record   json NOT NULL,
	PRIMARY KEY (instance, kind, name)
);
