package pgdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrBadURL is returned by [Open] for a database URL that cannot be parsed.
var ErrBadURL = errors.New("bad database URL")

// ErrUnavailable means the database could not be reached, even after retries: callers
// serving requests answer 503.
var ErrUnavailable = errors.New("database unavailable")

// DefaultRetryFor is how long [DB.Tx] and [DB.ReadTx] keep retrying by default: long enough
// to ride out a restart or failover of PostgreSQL of a few seconds, short enough that a
// client waiting for an answer gets its 503 before its own timeout (Key Protect clients
// wait 30 s; crkvol's remote client, volume/kms.Remote, starts no retry that would not fit
// in its timeout, so it reports the 503), and may send the request again.
const DefaultRetryFor = 10 * time.Second

// Options tune [Open]. The zero value is ready to use.
type Options struct {
	// Logger receives retries, reconnects and lease changes; nil discards them.
	Logger *slog.Logger
	// MaxConns caps the pool's connections; 0 leaves pgxpool's default (4 or the number
	// of CPUs, whichever is more) or the URL's pool_max_conns.
	MaxConns int32
	// ApplicationName is shown in pg_stat_activity; empty leaves the URL's.
	ApplicationName string
	// RetryFor is how long a transaction is retried before giving up; 0 means
	// DefaultRetryFor.
	RetryFor time.Duration
}

// DB is an open crkvol database: a connection pool on a schema at the version this program
// knows. It is safe for concurrent use.
type DB struct {
	pool     *pgxpool.Pool
	log      *slog.Logger
	version  int
	retryFor time.Duration
	url      string // redacted, for messages
}

// IsURL reports whether s is a PostgreSQL URL (postgres:// or postgresql://), as opposed
// to a file path or another store's address.
func IsURL(s string) bool {
	l := strings.ToLower(s)
	return strings.HasPrefix(l, "postgres://") || strings.HasPrefix(l, "postgresql://")
}

// The user-info password runs to the last @ of the authority, as net/url reads it.
var (
	userinfoPassword = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*):[^/?#]*@`)
	queryPassword    = regexp.MustCompile(`([?&]password=)[^&#]*`)
	kvPassword       = regexp.MustCompile(`(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]*)`)

	userinfoPasswordValue = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:([^/?#]*)@`)
	queryPasswordValue    = regexp.MustCompile(`[?&]password=([^&#]*)`)
)

// Redact returns s with any password in it replaced by xxxxx: the user-info password and a
// password query parameter of a URL, or the password of a keyword=value connection
// string. It works on URLs that do not parse, so that error messages can use it.
func Redact(s string) string {
	if IsURL(s) {
		s = userinfoPassword.ReplaceAllString(s, "${1}:xxxxx@")
		return queryPassword.ReplaceAllString(s, "${1}xxxxx")
	}
	return kvPassword.ReplaceAllString(s, "${1}xxxxx")
}

// passwords returns the passwords written in s, raw and decoded, for scrubbing messages
// that quote s.
func passwords(s string) []string {
	var out []string
	add := func(p string) {
		if p == "" {
			return
		}
		out = append(out, p)
		if d, err := url.PathUnescape(p); err == nil && d != p {
			out = append(out, d)
		}
		if d, err := url.QueryUnescape(p); err == nil && d != p {
			out = append(out, d)
		}
	}
	if m := userinfoPasswordValue.FindStringSubmatch(s); m != nil {
		add(m[1])
	}
	for _, m := range queryPasswordValue.FindAllStringSubmatch(s, -1) {
		add(m[1])
	}
	for _, m := range kvPassword.FindAllStringSubmatch(s, -1) {
		add(strings.Trim(m[2], "'"))
	}
	return out
}

// pgxQuoted is how pgx quotes the connection string in a parse error, after its own
// best-effort redaction, which can leave part of a password containing @ behind.
var pgxQuoted = regexp.MustCompile("(?s)cannot parse `.*`:")

// scrub returns msg with every password of connString in it replaced by xxxxx, and without
// pgx's quotation of the whole connection string.
func scrub(msg, connString string) string {
	msg = pgxQuoted.ReplaceAllLiteralString(msg, "cannot parse:")
	for _, p := range passwords(connString) {
		msg = strings.ReplaceAll(msg, p, "xxxxx")
	}
	return msg
}

// redactedError carries an error whose message has had passwords scrubbed, still
// unwrapping to the original for errors.Is and errors.As.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// hide returns err with connString's passwords scrubbed from its message.
func hide(err error, connString string) error {
	return &redactedError{msg: scrub(err.Error(), connString), err: err}
}

// Open connects to the database at rawURL and brings its schema up to the newest version
// this program knows (see the package documentation). It fails with [ErrBadURL] for a URL
// that does not parse, [ErrUnavailable] when the database cannot be reached, and
// [ErrSchemaTooNew] for a database written by a newer crkvol.
func Open(ctx context.Context, rawURL string, opts Options) (*DB, error) {
	redacted := Redact(rawURL)
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrBadURL, redacted, hide(err, rawURL))
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	if opts.ApplicationName != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = opts.ApplicationName
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	retryFor := opts.RetryFor
	if retryFor <= 0 {
		retryFor = DefaultRetryFor
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, redacted, hide(err, rawURL))
	}
	db := &DB{pool: pool, log: log, retryFor: retryFor, url: redacted}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("%w: connect to %s: %w", ErrUnavailable, redacted, hide(err, rawURL))
	}
	if err := db.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("database %s: %w", redacted, hide(err, rawURL))
	}
	return db, nil
}

// Close closes the pool, waiting for connections in use to be returned.
func (db *DB) Close() { db.pool.Close() }

// Pool returns the connection pool, for queries outside [DB.Tx].
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// SchemaVersion returns the schema version the database had once [Open] migrated it.
func (db *DB) SchemaVersion() int { return db.version }

// String returns the database's URL with its password redacted.
func (db *DB) String() string { return db.url }
