-- Migration 3: hosts' acknowledgements of root keys' lifecycle events (crk.HostAck): the
-- latest one per instance, key and host. A key's rows are deleted when it is purged.
CREATE TABLE crk_host_acks (
	instance text NOT NULL REFERENCES crk_instances (id) ON DELETE CASCADE,
	key_id   text NOT NULL,
	host     text NOT NULL,
	record   json NOT NULL,
	PRIMARY KEY (instance, key_id, host)
);
