// Package nbd serves a block device over the Network Block Device protocol, so that qemu,
// nbdcopy, nbdinfo, nbd-client or a virtual machine can use an attached crkvol volume as a
// disk.
//
// The server speaks fixed newstyle negotiation (NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_EXPORT_NAME,
// NBD_OPT_LIST, NBD_OPT_ABORT; other options get NBD_REP_ERR_UNSUP) and simple replies. It
// serves READ, WRITE, FLUSH, WRITE_ZEROES and DISC, honours FUA, and handles many requests of
// a connection at once, replying in whatever order they finish. TRIM is not offered: on an
// encrypted volume a discarded range would read back as garbage, and discards reveal to the
// storage which blocks are in use (cryptsetup leaves them off by default for the same reason).
//
// A protocol error of a client (bad magic, a request that cannot be parsed, the client
// vanishing in the middle of a request) closes that connection only; a request that can be
// answered (past the end, too large, unknown command or flag, a write to a read-only export)
// gets its NBD error code. A write is applied only once its whole payload has arrived.
//
// # Limits
//
// What a client can make the server hold is bounded, for each connection and for the server
// as a whole: a request's data (a WRITE's payload, a READ's reply) and a fixed cost per
// request are reserved from its connection's budget (Options.MaxBytesInFlight) and from the
// server's (Options.MaxBufferedBytes, 256 MiB by default) before the request is read any
// further. When either is spent the connection is simply not read from until earlier requests
// have been answered, so a client that pipelines requests without reading the replies is held
// back by flow control instead of growing the server. Such a client holds its reservations,
// and others wait for them, until it reads its replies, leaves, or has left a reply unread
// for Options.ReplyTimeout (a minute by default): then it is disconnected. The connection
// limit (Options.MaxConnections, 64 by default) and the handshake limit
// (Options.NegotiationTimeout, 10 s by default: clients that never finish negotiating are
// disconnected) bound how many connections idle clients can take.
//
// Request buffers are reused while clients are connected, up to 16 MiB of free ones; the
// rest, and all of them when the last client leaves, go back to the operating system at once
// (on Linux they are mapped outside the Go heap, and left out of core dumps). Each is cleared
// before reuse.
//
// The package is a leaf: it imports nothing of crkvol's, so any block device can be served.
//
// # Concurrency
//
// A [Server] serves any number of listeners and connections at once; [Server.Shutdown] stops
// them all. A connection's requests run concurrently on its Device, whose ReadAt and WriteAt
// must therefore be safe for concurrent use.
package nbd
