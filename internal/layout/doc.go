// Package layout holds no code: its test enforces the one-way import direction of crkvol's
// packages, which this comment states in one place.
//
// Every import points down this list, never up or sideways within a level:
//
//	5  crkvol/cmd/crkvol                  the CLI; nothing imports it
//	4  crkvol/sim, crkvol/bench           the fleet simulator, the benchmark harness
//	3  crkvol/volume/kms                  key services for volumes: in-process crk, remote Key Protect
//	   crkvol/agent                       the host agent: follows the lifecycle feed for a host's volumes
//	   crkvol/crk/console                 the web console over crk/kpapi's tenants
//	2  crkvol/volume                      encrypted volume images (declares the KeyService it needs)
//	   crkvol/crk/kpapi                   the Key Protect API v2 server over crk
//	1  crkvol/keyslot                     LUKS2 metadata and keyslots
//	   crkvol/crk                         customer root keys, their store, events
//	0  crkvol/sector                      the aes-xts-plain64 sector engine
//	   crkvol/nbd                         the NBD server
//	   crkvol/qcow2                       QEMU's qcow2 images: reader, writer
//	   crkvol/internal/...                helpers not meant for users
//
// Two rules beside the levels: crkvol/volume reaches crk only through its own KeyService
// interface (crkvol/volume/kms is the adapter), so it imports neither crk nor crk/kpapi; and
// the packages of level 0 import nothing of crkvol's but other internal helpers. And three
// helpers are for tests only, which no non-test file may import: crkvol/internal/tooltest
// (external tools, long runs), crkvol/internal/pgtest (a throwaway PostgreSQL server) and
// crkvol/internal/chrometest (a headless chromium for the console's browser tests).
package layout
