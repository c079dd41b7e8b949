package crk

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"crkvol/internal/ident"
)

// Options configure a Service. The zero value is ready to use.
type Options struct {
	// Clock is the service clock; the system clock if nil.
	Clock Clock
	// Rand is the source of key material, ids and nonces; crypto/rand if nil.
	Rand io.Reader
	// MasterKey is the 32-byte service master key (the HSM's role). If nil, the key comes
	// from MasterKeyFile. The caller keeps it and may clear it once Open returns.
	MasterKey []byte
	// MasterKeyFile holds the master key, created (mode 0600) on first use; default: the
	// store path with ".masterkey" appended. Its directory must not be writable by its group
	// or others, nor owned by another user than the caller's or root: Open refuses it
	// (ErrMasterKey) before reading or writing anything there.
	MasterKeyFile string
	// Region and Account go into key CRNs; defaults "local" and "crkvol".
	Region, Account string
	// Instance is the service instance id (a UUID, either case, kept in lower case) given to
	// a new store; a random one if empty. Opening an existing store with a different id
	// fails.
	Instance string
	// Initiator names who acts in events when the context does not (see WithInitiator);
	// default "crkvol".
	Initiator string
	// Logger receives operational messages (never key material); discarded if nil.
	Logger *slog.Logger
	// NoSync skips fsync on commits: faster, but a machine crash may lose acknowledged
	// changes. For simulations only.
	NoSync bool
	// EventRetention bounds the audit log; by default it keeps DefaultEventMaxCount events.
	EventRetention EventRetention
	// FeedRetention bounds the lifecycle feed; by default it keeps 30 days of events, at
	// most DefaultFeedMaxCount.
	FeedRetention FeedRetention
	// ReadOnly opens an existing store for reading only, as a read-only state directory
	// allows: bbolt's shared lock (other readers may open the store, a writer holding it
	// makes Open time out), and nothing is created or written. The store and its key file
	// must exist and its schema must be current; the event retention is not applied; reads
	// are not audited, since their events cannot be stored; every change fails with
	// bbolt's ErrDatabaseReadOnly.
	ReadOnly bool
	// ImportTokenKey, if set, supplies the RSA key pair of each new import token in place of
	// a newly generated one (generating an RSA-4096 key costs seconds of CPU): for tests and
	// simulations that create many tokens. A key of any size but ImportTokenKeyBits is
	// refused, so it can never put a weaker key behind a token.
	ImportTokenKey func() (*rsa.PrivateKey, error)
}

// Service is a customer-root-key service backed by one bbolt file or by one instance of a
// PostgreSQL [Database]. It is safe for concurrent use. Every state change is one
// transaction, durable before the call returns.
type Service struct {
	store     backend
	stopWatch func()
	closeErr  error
	clock     Clock
	rand      io.Reader
	log       *slog.Logger
	keyFile   string // "" when the master key was given directly
	region    string
	account   string
	instance  string
	initiator string
	retention EventRetention

	feedRetention FeedRetention
	feedMu        sync.Mutex
	feedChanged   chan struct{} // closed and replaced when feed events commit

	readOnly bool

	importTokenKey func() (*rsa.PrivateKey, error) // Options.ImportTokenKey

	// maxHostAcks is the most hosts a key keeps acknowledgements of: MaxHostAcksPerKey, lower
	// in tests.
	maxHostAcks int

	// testOnlyAuditFault, set by tests, makes storing an event fail with its error.
	testOnlyAuditFault func(*Event) error

	aeads aeadCache // the AES-GCM of key versions used last (wrap.go)

	mkMu   sync.RWMutex // guards sealer and check (RotateMasterKey takes it exclusively)
	sealer *sealer
	check  []byte // the store's master key check value, as this service opened it

	hookMu sync.Mutex
	hooks  map[int]RotationHook
	nextID int

	closing   chan struct{} // closed by Close: long polls of the lifecycle feed end
	closeOnce sync.Once
}

// Open opens (creating if needed) the bbolt store at path.
func Open(path string, opts Options) (*Service, error) {
	s, err := newService(opts)
	if err != nil {
		return nil, err
	}
	if opts.MasterKeyFile == "" {
		opts.MasterKeyFile = path + ".masterkey"
	}
	_, statErr := os.Stat(path)
	master, keyFile, err := loadMasterKey(opts, statErr == nil, path)
	if err != nil {
		return nil, err
	}
	be, err := openBolt(path, opts, s.log.Info)
	if err != nil {
		return nil, err
	}
	return s.start(be, master, keyFile)
}

// newService makes a service of opts, with no store yet.
func newService(opts Options) (*Service, error) {
	s := &Service{
		instance:      opts.Instance,
		clock:         opts.Clock,
		rand:          opts.Rand,
		log:           opts.Logger,
		region:        opts.Region,
		account:       opts.Account,
		initiator:     opts.Initiator,
		retention:     opts.EventRetention,
		feedRetention: opts.FeedRetention,
		feedChanged:   make(chan struct{}),
		readOnly:      opts.ReadOnly,
		maxHostAcks:   MaxHostAcksPerKey,
		hooks:         make(map[int]RotationHook),
		closing:       make(chan struct{}),
	}
	s.importTokenKey = opts.ImportTokenKey
	if s.instance != "" {
		id, err := ident.CanonicalUUID(s.instance)
		if err != nil {
			return nil, fmt.Errorf("%w: instance id: %w", ErrInvalidArgument, err)
		}
		s.instance = id
	}
	if s.clock == nil {
		s.clock = SystemClock{}
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.region == "" {
		s.region = ident.DefaultLocation
	}
	if s.account == "" {
		s.account = ident.DefaultAccount
	}
	if s.initiator == "" {
		s.initiator = "crkvol"
	}
	return s, nil
}

// start runs the service on its backend: it checks the master key against the store (making
// a new store's check value and instance id). It closes be if it fails.
func (s *Service) start(be backend, master []byte, keyFile string) (*Service, error) {
	s.store, s.keyFile = be, keyFile
	if s.readOnly {
		if err := s.initReadOnly(master); err != nil {
			be.close()
			return nil, err
		}
		s.stopWatch = func() {}
		return s, nil
	}
	if err := s.init(master); err != nil {
		be.close()
		return nil, err
	}
	s.stopWatch = be.watchFeed(s.notifyFeed)
	return s, nil
}

// initReadOnly checks a store opened read-only: the master key (or a pending one of an
// interrupted RotateMasterKey, left as it is) opens its check value.
func (s *Service) initReadOnly(master []byte) error {
	candidates := [][]byte{master}
	if s.keyFile != "" {
		if b, err := readKeyFile(s.keyFile + ".new"); err == nil {
			candidates = append(candidates, b)
		}
	}
	return s.view(context.Background(), func(tx storeTx) error {
		stored, check, err := tx.meta()
		if err != nil {
			return err
		}
		if stored == "" || (s.instance != "" && !strings.EqualFold(s.instance, stored)) {
			return fmt.Errorf("%w: store belongs to instance %q, not %s", ErrInvalidArgument, stored, s.instance)
		}
		s.instance = stored
		for _, k := range candidates {
			sl, err := newSealer(k)
			if err != nil {
				continue
			}
			if _, err := sl.open(check, nil); err == nil {
				s.sealer, s.check = sl, check
				return nil
			}
		}
		return fmt.Errorf("%w (is the master key or key file the one this store was made with?)", ErrMasterKey)
	})
}

// init applies the retentions, gives a new store its instance id and master key check value,
// and checks the master key against the store. A key file left by an interrupted
// RotateMasterKey is resolved here, once the transaction committed.
func (s *Service) init(master []byte) error {
	candidates := [][]byte{master}
	var pending []byte
	if s.keyFile != "" {
		if b, err := readKeyFile(s.keyFile + ".new"); err == nil {
			pending = b
			candidates = append(candidates, b)
		}
	}
	var (
		instance string
		sealer   *sealer
		checked  []byte
		usedNew  bool
	)
	err := s.update(context.Background(), func(tx storeTx) error {
		instance, sealer, checked, usedNew = "", nil, nil, false
		if n, err := s.pruneEvents(tx, 0); err != nil {
			return fmt.Errorf("crk: store: applying the event retention: %w", err)
		} else if n > 0 {
			s.log.Info("crk: events beyond the retention deleted", "events", n)
		}
		if n, err := s.pruneFeed(tx, 0); err != nil {
			return fmt.Errorf("crk: store: applying the lifecycle feed retention: %w", err)
		} else if n > 0 {
			s.log.Info("crk: lifecycle events beyond the feed retention deleted", "events", n)
		}
		stored, check, err := tx.meta()
		if err != nil {
			return err
		}
		id := stored
		if id == "" {
			if id = s.instance; id == "" {
				if id, err = newUUID(s.rand); err != nil {
					return err
				}
			}
		}
		if s.instance != "" && !strings.EqualFold(s.instance, id) {
			return fmt.Errorf("%w: store belongs to instance %s, not %s", ErrInvalidArgument, id, s.instance)
		}
		instance = id
		if check == nil {
			sl, err := newSealer(master)
			if err != nil {
				return err
			}
			sealed, err := sl.seal(s.rand, []byte(checkText), nil)
			if err != nil {
				return err
			}
			sealer, checked = sl, sealed
			return tx.setMeta(id, sealed)
		}
		for i, k := range candidates {
			sl, err := newSealer(k)
			if err != nil {
				continue
			}
			if _, err := sl.open(check, nil); err == nil {
				sealer, checked, usedNew = sl, check, i == 1
				if stored == "" {
					return tx.setMeta(id, check)
				}
				return nil
			}
		}
		return fmt.Errorf("%w (is the master key or key file the one this store was made with?)", ErrMasterKey)
	})
	if err != nil {
		return err
	}
	s.instance, s.sealer, s.check = instance, sealer, checked
	switch {
	case usedNew:
		// RotateMasterKey committed but did not get to rename the new key file into
		// place: finish its work.
		if err := writeKeyFile(s.keyFile, pending); err != nil {
			return err
		}
		_ = os.Remove(s.keyFile + ".new")
	case pending != nil:
		// It never committed: the pending key is unused.
		_ = os.Remove(s.keyFile + ".new")
	}
	return nil
}

// Close closes the store.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.stopWatch()
		s.closeErr = s.store.close() // after the group commits under way
		s.aeads.clear()
	})
	return s.closeErr
}

// Instance returns the service instance id (a UUID, part of every key CRN).
func (s *Service) Instance() string { return s.instance }

// crn returns the CRN of a key.
func (s *Service) crn(keyID string) string {
	return ident.KeyCRN(s.region, s.account, s.instance, keyID).String()
}

type initiatorKey struct{}

// WithInitiator returns a context whose operations are recorded as done by who.
func WithInitiator(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, initiatorKey{}, who)
}

func (s *Service) who(ctx context.Context) string {
	if v, ok := ctx.Value(initiatorKey{}).(string); ok && v != "" {
		return v
	}
	return s.initiator
}
