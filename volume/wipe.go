package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// ErrNoWipe means Wipe was asked to resume a wipe, but the volume's token records none: the
// volume was never wiped, or its wipe completed. Wiping it again (WipeOptions.All) destroys
// its data, so that is never done without being asked.
var ErrNoWipe = errors.New("no incomplete wipe recorded")

// ErrWipeIncomplete means a volume was opened for writing while a wipe of its data area is
// recorded as incomplete: resuming the wipe would zero what was written, so writes wait
// until [Manager.Wipe] has finished it. Read-only opens are allowed.
var ErrWipeIncomplete = errors.New("wipe of the data area is incomplete")

// WipeProgress is how far a wipe of a volume's data area got: the bytes from Next to Size may
// not read as zeros yet; those before Next were zeroed by the wipe, or, for the wipe of the
// area a resize added ([ResizeOptions.Wipe]), which starts at the old size, hold the data. A volume's token holds it (member "wipe", as
// {"next": N, "size": S}) from the start of a wipe until it completes, so an interrupted wipe
// is visible ([Info.Wipe]) and resumable ([Manager.Wipe]).
type WipeProgress struct {
	// Next is the data offset up to which zeros were written and synced.
	Next int64 `json:"next"`
	// Size is the size of the data area being wiped.
	Size int64 `json:"size"`
}

// Percent returns the wiped share of the data area, rounded down, from 0 to 100.
func (p WipeProgress) Percent() int {
	if p.Size <= 0 {
		return 0
	}
	return int(p.Next * 100 / p.Size)
}

// Done reports whether the whole data area is wiped.
func (p WipeProgress) Done() bool { return p.Size > 0 && p.Next >= p.Size }

// check validates a wipe record read from a token.
func (p WipeProgress) check() error {
	if p.Size <= 0 || p.Next < 0 || p.Next > p.Size {
		return fmt.Errorf("next %d and size %d are not 0 <= next <= size, size > 0", p.Next, p.Size)
	}
	return nil
}

// WipeOptions tune [Manager.Wipe].
type WipeOptions struct {
	// All wipes the whole data area from its start, whether or not a wipe is recorded: it
	// destroys the volume's data. Without it, Wipe resumes the recorded wipe, and fails with
	// ErrNoWipe if there is none.
	All bool
	// Progress, if set, is called after each piece written with the bytes wiped so far (from
	// the start of the data area) and the data size. It runs on Wipe's goroutine.
	Progress func(done, total int64)
}

const (
	// wipeChunk is the size of one write of zeros; ctx is checked between them.
	wipeChunk = 1 << 20
	// wipeCheckpoint is how much is written between two progress records (each an fsync of
	// the data and a header commit).
	wipeCheckpoint = 16 << 20
)

// Wipe writes zeros through the encryption over a volume's data area, so that it reads as
// zeros (a new image's data area otherwise decrypts to noise). It records its progress in the
// volume's crkvol-crk token: first the record ({next, size}), then, every 16 MiB, the new next
// after the data written so far is synced, and at completion it removes the record. When ctx
// ends, Wipe stops between two writes, syncs, records how far it got and returns that
// progress with an error matching ctx.Err(); a later Wipe without All resumes from there.
// Opening a volume whose wipe is incomplete works (its unwiped part reads as noise, which is
// not dangerous); [Describe] shows the record in [Info.Wipe].
//
// The volume is opened read-write, so a wipe fails with ErrInUse while it is attached or
// written elsewhere. The returned progress is the last one recorded (Next == Size when done).
func (m *Manager) Wipe(ctx context.Context, path string, opts WipeOptions) (WipeProgress, error) {
	v, err := m.OpenWith(ctx, path, OpenOptions{wiping: true})
	if err != nil {
		return WipeProgress{}, err
	}
	defer v.Close()
	id, tok, err := findToken(v.img)
	if err != nil {
		return WipeProgress{}, fmt.Errorf("volume: wipe %s: %w", path, err)
	}
	p := WipeProgress{Size: v.Size()}
	switch {
	case opts.All:
	case tok.Wipe == nil:
		return WipeProgress{}, fmt.Errorf("volume: wipe %s: %w (a full wipe, which destroys the data, must be asked for)", path, ErrNoWipe)
	case tok.Wipe.Size != p.Size:
		return WipeProgress{}, fmt.Errorf("volume: wipe %s: %w: member wipe: recorded size %d is not the data size %d", path, ErrBadToken, tok.Wipe.Size, p.Size)
	default:
		p.Next = tok.Wipe.Next
	}
	if opts.All || tok.Wipe == nil || *tok.Wipe != p {
		if err := m.recordWipe(ctx, v, id, &p); err != nil {
			return WipeProgress{}, fmt.Errorf("volume: wipe %s: recording the start: %w", path, err)
		}
	}
	recorded := p
	zeros := make([]byte, wipeChunk)
	// stop syncs what was written and records it, whatever ctx says: the record must never
	// claim more than what is on disk, and should claim all of that.
	stop := func(cause error) (WipeProgress, error) {
		bg := context.WithoutCancel(ctx)
		if p.Next > recorded.Next {
			if err := v.Sync(); err != nil {
				return recorded, errors.Join(cause, fmt.Errorf("volume: wipe %s: syncing: %w", path, err))
			}
			if err := m.recordWipe(bg, v, id, &p); err != nil {
				return recorded, errors.Join(cause, fmt.Errorf("volume: wipe %s: recording progress: %w", path, err))
			}
			recorded = p
		}
		return recorded, fmt.Errorf("volume: wipe %s: stopped at byte %d of %d (%d%%, recorded): %w", path, p.Next, p.Size, p.Percent(), cause)
	}
	for p.Next < p.Size {
		if err := ctx.Err(); err != nil {
			return stop(err)
		}
		n := min(int64(len(zeros)), p.Size-p.Next)
		if _, err := v.WriteAt(zeros[:n], p.Next); err != nil {
			return stop(err)
		}
		p.Next += n
		if opts.Progress != nil {
			opts.Progress(p.Next, p.Size)
		}
		if p.Next-recorded.Next >= wipeCheckpoint && p.Next < p.Size {
			if err := v.Sync(); err != nil {
				return recorded, fmt.Errorf("volume: wipe %s: syncing: %w", path, err)
			}
			if err := m.recordWipe(context.WithoutCancel(ctx), v, id, &p); err != nil {
				return recorded, fmt.Errorf("volume: wipe %s: recording progress: %w", path, err)
			}
			recorded = p
		}
	}
	if err := v.Sync(); err != nil {
		return recorded, fmt.Errorf("volume: wipe %s: syncing: %w", path, err)
	}
	if err := m.recordWipe(context.WithoutCancel(ctx), v, id, nil); err != nil {
		return recorded, fmt.Errorf("volume: wipe %s: removing the record: %w", path, err)
	}
	m.opts.Logger.Info("volume wiped", "path", path, "bytes", p.Size)
	return p, nil
}

// recordWipe sets (p) or removes (nil) the wipe member of token id, keeping the rest of the
// token as it is.
func (m *Manager) recordWipe(ctx context.Context, v *Volume, id int, p *WipeProgress) error {
	uuid := v.uuid // fn below runs under the image's lock: no Image methods in it
	return v.img.UpdateTokenContext(ctx, id, func(cur json.RawMessage) ([]byte, error) {
		t, err := parseToken(cur, uuid)
		if err != nil {
			return nil, err
		}
		if p == nil {
			t.Wipe = nil
		} else {
			w := *p
			t.Wipe = &w
		}
		return t.marshalChecked(uuid)
	})
}
