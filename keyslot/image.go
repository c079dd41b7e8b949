package keyslot

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Device is the storage a LUKS2 image lives on: an *os.File, or anything else with positioned
// reads and writes. When the device also has a Sync() error method (as *os.File does), every
// header copy is made durable before the next one is written. When it has an Fd() uintptr
// method, reads take a shared and updates an exclusive flock(2) on it, so processes never
// interleave metadata updates. flock belongs to the open file, so give each Image its own
// open file: two Images sharing one *os.File do not exclude each other across processes.
type Device interface {
	io.ReaderAt
	io.WriterAt
}

// Options tune how an image is opened. The zero value is ready to use.
type Options struct {
	// Rand is the source of salts, keys and random keyslot padding; crypto/rand if nil.
	Rand io.Reader
	// Buffers lends the scratch buffers of header reads and writes. Share one among the
	// Images a program opens one after another (a fleet rewrap, say) so that they reuse the
	// same few buffers; if nil, each Image has its own.
	Buffers *Buffers
}

// Image is an open LUKS2 image. Its methods are safe for concurrent use; metadata updates are
// serialised within the process by a mutex and across processes by flock on the device.
//
// An Image caches the metadata it last read or wrote. Every update re-reads the metadata from
// the device under the exclusive lock and applies its change to that, so changes made by
// other processes are never lost; [Image.Reload] refreshes the cache for readers.
type Image struct {
	dev  Device
	rand io.Reader
	bufs *Buffers

	mu     sync.Mutex // guards st, health and verified, and serialises updates in this process
	st     *state
	health Health

	// verified holds, by offset, the header copy last read there and found whole and
	// valid, or last written there: its bytes and what they parse to. A copy read again
	// byte for byte the same has the same checksum and metadata, so readCopy takes them
	// from here instead of hashing and parsing again; different bytes are checked in full.
	verified map[uint64]*copyState
}

// state is one consistent view of the header: the binary fields and the metadata.
type state struct {
	bin  binHeader // from the copy in use; secondary/hdrOffset/salt/csum are per copy
	meta *metadata
	text []byte // the JSON text exactly as read or written
}

// CopyHealth describes one header copy as last read.
type CopyHealth struct {
	// Offset is where the copy was looked for (the secondary's offset is the header size).
	Offset uint64
	// SeqID is the copy's sequence number, when its binary header could be read.
	SeqID uint64
	// Err is nil for a good, current copy; otherwise why the copy is unusable or stale.
	Err error
}

// Health reports the state of both header copies. A damaged or stale copy is rewritten from
// the good one by the next metadata update, or by [Image.Repair].
type Health struct {
	Primary, Secondary CopyHealth
}

// OK reports whether both copies are good and current.
func (h Health) OK() bool { return h.Primary.Err == nil && h.Secondary.Err == nil }

// Open reads the LUKS2 header of dev. It uses the valid copy with the higher sequence number,
// and never writes: a damaged copy is reported by [Image.Health].
func Open(dev Device, opts *Options) (*Image, error) {
	return OpenContext(context.Background(), dev, opts)
}

// OpenContext is [Open] with a context that bounds the wait for the device lock: when ctx
// ends while another process holds the image's exclusive lock, it returns an error wrapping
// ctx.Err().
func OpenContext(ctx context.Context, dev Device, opts *Options) (*Image, error) {
	img := &Image{dev: dev, rand: rand.Reader}
	if opts != nil && opts.Rand != nil {
		img.rand = opts.Rand
	}
	if opts != nil && opts.Buffers != nil {
		img.bufs = opts.Buffers
	} else {
		img.bufs = &Buffers{}
	}
	if err := img.ReloadContext(ctx); err != nil {
		return nil, err
	}
	return img, nil
}

// Reload re-reads the header from the device.
func (img *Image) Reload() error {
	return img.ReloadContext(context.Background())
}

// ReloadContext is [Image.Reload] with a context that bounds the wait for the locks: when
// ctx ends first, it returns an error wrapping ctx.Err().
func (img *Image) ReloadContext(ctx context.Context) error {
	return img.locked(ctx, unix.LOCK_SH, func(*state, Health) error { return nil })
}

// locked loads the header afresh and runs fn while holding img.mu and the device lock
// (shared or exclusive), so no other process's update can come in between. Waiting for
// either lock ends with an error wrapping ctx.Err() when ctx ends.
func (img *Image) locked(ctx context.Context, how int, fn func(st *state, health Health) error) error {
	if err := lockMutex(ctx, &img.mu); err != nil {
		return err
	}
	defer img.mu.Unlock()
	unlock, err := lockDevice(ctx, img.dev, how)
	if err != nil {
		return err
	}
	defer unlock()
	if img.verified == nil {
		img.verified = make(map[uint64]*copyState, 2)
	}
	st, health, err := load(img.dev, img.verified, img.bufs)
	if err != nil {
		return err
	}
	img.st, img.health = st, health
	return fn(st, health)
}

// Health returns the state of the header copies as last read or written.
func (img *Image) Health() Health {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.health
}

// Repair rewrites a damaged or stale header copy from the good one, keeping its sequence
// number. It is a no-op when both copies are good and current. Unlike the repair every
// metadata change makes first, it goes ahead even when the device also carries another
// format's signature ([ErrAmbiguousSignature]), which it may overwrite, as `cryptsetup
// repair` does.
func (img *Image) Repair() error {
	return img.locked(context.Background(), unix.LOCK_EX, img.repairLocked)
}

// repairLocked copies the good header copy over a damaged or stale one, with the same
// sequence number and metadata, and syncs. It must run before any commit that starts from a
// damaged image: a commit writes the primary first, and if the secondary were not whole, a
// crash in the middle of the primary would leave no valid copy — or, with a stale secondary,
// roll back past the last committed change. A crash during the repair itself only touches the
// copy that was already bad. The caller holds img.mu and the exclusive device lock.
func (img *Image) repairLocked(st *state, health Health) error {
	if health.OK() {
		return nil
	}
	hdrSize := st.bin.hdrSize
	if uint64(len(st.text)) >= hdrSize-binHeaderSize {
		return fmt.Errorf("%w: metadata does not fit its JSON area", ErrHeaderCorrupt)
	}
	area, handle := img.jsonArea(hdrSize, st.text)
	defer img.bufs.put(handle)
	for _, secondary := range []bool{false, true} {
		bad := health.Primary.Err
		if secondary {
			bad = health.Secondary.Err
		}
		if bad == nil {
			continue
		}
		if err := img.writeCopyOf(st.bin, secondary, area, st.text, st.meta); err != nil {
			return fmt.Errorf("keyslot: repairing the %s header: %w", copyName(secondary), err)
		}
	}
	img.health = healthy(st.bin)
	return nil
}

// jsonArea returns the JSON area of a header of size hdrSize holding text (shorter than the
// area), zero-padded, in a buffer from img.bufs, and the handle to give back to it.
func (img *Image) jsonArea(hdrSize uint64, text []byte) ([]byte, *[]byte) {
	area, handle := img.bufs.get(int(hdrSize - binHeaderSize))
	n := copy(area, text)
	clear(area[n:])
	return area, handle
}

// writeCopyOf writes the primary or secondary copy of header bin (fresh salt, its own magic
// and offset) with the given JSON area, and syncs it. meta is what text, the JSON text in the
// area, parses to: with the bytes written, it is recorded in img.verified for the next read.
// text is kept; area may be reused once it returns.
func (img *Image) writeCopyOf(bin binHeader, secondary bool, area, text []byte, meta *metadata) error {
	bin, err := img.copyOf(bin, secondary)
	if err != nil {
		return err
	}
	return img.writePrepared(bin, area, text, meta, nil)
}

// copyOf returns bin as the header of its primary or secondary copy: that copy's magic and
// offset, and a fresh salt.
func (img *Image) copyOf(bin binHeader, secondary bool) (binHeader, error) {
	bin.secondary = secondary
	bin.hdrOffset = 0
	if secondary {
		bin.hdrOffset = bin.hdrSize
	}
	if _, err := io.ReadFull(img.rand, bin.salt[:]); err != nil {
		return bin, fmt.Errorf("keyslot: reading random header salt: %w", err)
	}
	return bin, nil
}

// writePrepared is writeCopyOf for bin from copyOf; csum, when not nil, is the checksum of
// the copy (diskChecksum of bin without checksum and area), computed beforehand.
func (img *Image) writePrepared(bin binHeader, area, text []byte, meta *metadata, csum *[csumLen]byte) error {
	delete(img.verified, bin.hdrOffset)
	buf, handle := img.bufs.get(binHeaderSize)
	defer img.bufs.put(handle)
	raw, err := writeCopyBuf(img.dev, &bin, area, buf, csum)
	if err != nil {
		return err
	}
	// Recorded as a read would find it: the binary header parsed from its bytes, the text
	// up to the first NUL (text, when that is what the area holds).
	h, err := parseBinHeaderLike(raw, &bin)
	if t, terr := jsonText(area); err == nil && terr == nil && bytes.Equal(t, text) && img.verified != nil {
		img.verified[bin.hdrOffset] = &copyState{bin: h, raw: keepRaw(raw, h), text: text, meta: meta}
	}
	return nil
}

// healthy is the Health of an image whose two copies both hold bin's metadata.
func healthy(bin binHeader) Health {
	return Health{
		Primary:   CopyHealth{Offset: 0, SeqID: bin.seqID},
		Secondary: CopyHealth{Offset: bin.hdrSize, SeqID: bin.seqID},
	}
}

// update applies fn to a fresh copy of the on-disk metadata and commits the result: the
// exclusive lock is held from the read to the last write, so no other process's update can
// come in between.
func (img *Image) update(fn func(st *state, m *metadata) error) error {
	return img.updateContext(context.Background(), fn)
}

// updateContext is update with a context: waiting for the lock ends with an error wrapping
// ctx.Err() when ctx ends.
func (img *Image) updateContext(ctx context.Context, fn func(st *state, m *metadata) error) error {
	return img.updateWith(ctx, false, false, fn)
}

// updateTokens is updateContext for an fn that changes m.tokens only (adds, removes or
// replaces entries, never edits a token's bytes in place) and nothing else of m: m is then
// a cloneTokens copy, which shares all but the tokens map with the metadata read.
func (img *Image) updateTokens(ctx context.Context, fn func(st *state, m *metadata) error) error {
	return img.updateWith(ctx, false, true, fn)
}

// updateWith is updateContext; with allowUnmet, it runs even when the image has unmet
// mandatory requirements (for the one change cryptsetup allows then, destroying a keyslot);
// with tokensOnly, fn may change nothing but m.tokens (see updateTokens).
func (img *Image) updateWith(ctx context.Context, allowUnmet, tokensOnly bool, fn func(st *state, m *metadata) error) error {
	return img.locked(ctx, unix.LOCK_EX, func(st *state, health Health) error {
		if !health.OK() {
			// The repair below would overwrite what is where the bad copy was: refuse when
			// that is another format's signature (cryptsetup's "ambiguous signatures").
			sig, err := foreignSignature(img.dev)
			if err != nil {
				return err
			}
			if sig != "" {
				return fmt.Errorf("%w: a header copy needs repair, but the device also holds %s, which the repair would overwrite; metadata changes are refused until an explicit Repair", ErrAmbiguousSignature, sig)
			}
		}
		if err := img.repairLocked(st, health); err != nil {
			return err
		}
		if req := st.meta.config.mandatory; len(req) > 0 && !allowUnmet {
			return fmt.Errorf("%w: the image requires %q; metadata changes are refused", ErrUnmetRequirement, req)
		}
		// A private copy to change: st.meta is what st.text parses to (see load), and may
		// be shared with readers and with img.verified.
		var m *metadata
		if tokensOnly {
			m = st.meta.cloneTokens()
		} else {
			m = st.meta.clone()
		}
		if err := fn(st, m); err != nil {
			return err
		}
		return img.commitLocked(st, m)
	})
}

// commitLocked writes m to both header copies with the next sequence number, primary first,
// each as binary header without checksum, JSON area, binary header with checksum, then a sync
// (cryptsetup's hdr_write_disk order). A crash at any point leaves at least one copy that is
// whole: the old primary or secondary until the new primary is complete, the new primary
// after. The caller holds img.mu and the exclusive device lock.
func (img *Image) commitLocked(st *state, m *metadata) error {
	hdrSize := st.bin.hdrSize
	text := m.marshalSized(len(st.text) + len(st.text)/8 + 64) // room for a longer token
	// Never write what we could not read back.
	readBack, err := parseMetadataIn(text, hdrSize, img.bufs)
	if err != nil {
		return fmt.Errorf("keyslot: refusing to write invalid metadata: %w", err)
	}
	jsonSize := hdrSize - binHeaderSize
	if uint64(len(text)) >= jsonSize {
		return fmt.Errorf("%w: metadata is %d bytes, the JSON area holds %d", ErrNoSpace, len(text), jsonSize-1)
	}
	area, handle := img.jsonArea(hdrSize, text)
	defer img.bufs.put(handle)

	next := st.bin
	next.seqID++
	// Both copies' headers (salts read in the same order as when each was made just before
	// its write) and checksums first: the two checksums are computed together.
	primary, err := img.copyOf(next, false)
	if err != nil {
		return err
	}
	secondary, err := img.copyOf(next, true)
	if err != nil {
		return err
	}
	pcs, scs, err := img.copyChecksums(&primary, &secondary, area)
	if err != nil {
		return err
	}
	if err := img.writePrepared(primary, area, text, readBack, &pcs); err != nil {
		return err
	}
	if err := img.writePrepared(secondary, area, text, readBack, &scs); err != nil {
		return err
	}
	img.st = &state{bin: next, meta: m, text: text}
	img.health = healthy(next)
	return nil
}

// copyChecksums returns the checksums of the header copies a and b (from copyOf) with the
// JSON area area, as writeCopy computes each: diskChecksumPair over both binary headers
// without checksum.
func (img *Image) copyChecksums(a, b *binHeader, area []byte) (ca, cb [csumLen]byte, err error) {
	bufA, handleA := img.bufs.get(binHeaderSize)
	defer img.bufs.put(handleA)
	bufB, handleB := img.bufs.get(binHeaderSize)
	defer img.bufs.put(handleB)
	if a.csumAlg != b.csumAlg {
		return ca, cb, fmt.Errorf("%w: the copies' checksum algorithms differ", ErrHeaderCorrupt)
	}
	return diskChecksumPair(a.csumAlg, a.marshalTo(bufA, false), b.marshalTo(bufB, false), area, area)
}

// writeCopy writes one header copy at h.hdrOffset and syncs it: the binary header without
// its checksum, the JSON area, then the binary header with the checksum (of the first form
// and the area). It returns the binary header as finally written.
func writeCopy(dev Device, h *binHeader, area []byte) ([]byte, error) {
	return writeCopyBuf(dev, h, area, make([]byte, binHeaderSize), nil)
}

// writeCopyBuf is writeCopy with the binary header built in buf (binHeaderSize bytes, any
// contents), which it returns. csum, when not nil, is the checksum, computed beforehand.
func writeCopyBuf(dev Device, h *binHeader, area, buf []byte, pre *[csumLen]byte) ([]byte, error) {
	which := "primary"
	if h.secondary {
		which = "secondary"
	}
	off := int64(h.hdrOffset)
	b := h.marshalTo(buf, false)
	if _, err := dev.WriteAt(b, off); err != nil {
		return nil, fmt.Errorf("keyslot: writing %s binary header: %w", which, err)
	}
	if _, err := dev.WriteAt(area, off+binHeaderSize); err != nil {
		return nil, fmt.Errorf("keyslot: writing %s JSON area: %w", which, err)
	}
	var csum [csumLen]byte
	if pre != nil {
		csum = *pre
	} else {
		var err error
		if csum, err = diskChecksum(h.csumAlg, b, area); err != nil {
			return nil, err
		}
	}
	h.csum = csum
	copy(b[offCsum:offCsum+csumLen], csum[:]) // b is now h.marshal(true)
	if _, err := dev.WriteAt(b, off); err != nil {
		return nil, fmt.Errorf("keyslot: writing %s header checksum: %w", which, err)
	}
	if err := syncDevice(dev); err != nil {
		return nil, fmt.Errorf("keyslot: syncing %s header: %w", which, err)
	}
	return b, nil
}

// load reads both header copies and picks the one to use. Copies byte for byte as in
// verified (see Image.verified) are taken from there; every copy it reads whole and valid is
// recorded in verified, when that is not nil.
// Its reads go through a buffer from bufs: what it keeps is copied out of it.
func load(dev Device, verified map[uint64]*copyState, bufs *Buffers) (*state, Health, error) {
	pf := prefetch(dev, bufs)
	defer pf.release()
	dev = pf
	var health Health
	var primary *copyState
	var candidates [1 + 9]uint64
	nc := 0
	h, raw, perr := readBinHeader(dev, 0, verifiedBin(verified, 0))
	var sums pairedSums
	if perr == nil {
		sums = pairChecksums(pf, h, raw, verified)
		primary, _, perr = checkCopy(dev, 0, false, h, raw, nil, verified, bufs, sums.at(0))
		// The secondary sits at the header size: take it from the primary when that much of
		// the primary is readable, else probe every allowed size, smallest first.
		candidates[0], nc = h.hdrSize, 1
	}
	health.Primary.Err = perr
	if primary != nil {
		health.Primary.SeqID = primary.bin.seqID
	}
	for _, s := range hdrSizes {
		if nc == 0 || s != candidates[0] {
			candidates[nc] = s
			nc++
		}
	}
	// When no candidate holds a good secondary, report the error of the one that got
	// furthest (a secondary header found but refused, say for its metadata) rather than the
	// "bad magic" of sizes where there is none; on a tie, the first candidate's.
	var secondary *copyState
	var serr error
	best := -1
	for _, off := range candidates[:nc] {
		c, stage, err := readCopy(dev, off, true, primary, verified, bufs, sums.at(off))
		if err == nil {
			secondary, serr = c, nil
			health.Secondary = CopyHealth{Offset: off, SeqID: c.bin.seqID}
			break
		}
		if stage > best {
			best, serr = stage, err
			health.Secondary = CopyHealth{Offset: off, Err: err}
		}
	}

	switch {
	case primary == nil && secondary == nil:
		if isLUKS1(dev) {
			return nil, health, fmt.Errorf("%w: %w", ErrNotLUKS2, ErrLUKS1)
		}
		return nil, health, fmt.Errorf("%w: primary header: %w; secondary header: %w", ErrNotLUKS2, perr, serr)
	case secondary == nil:
		return primary.state(), health, nil
	case primary == nil:
		return secondary.state(), health, nil
	}
	if primary.bin.hdrSize != secondary.bin.hdrSize || primary.bin.uuid != secondary.bin.uuid {
		// Two unrelated headers: trust the primary, report the other.
		health.Secondary.Err = fmt.Errorf("%w: secondary header (size %d, uuid %q) does not belong to the primary (size %d, uuid %q)",
			ErrHeaderCorrupt, secondary.bin.hdrSize, secondary.bin.uuid, primary.bin.hdrSize, primary.bin.uuid)
		return primary.state(), health, nil
	}
	switch {
	case primary.bin.seqID > secondary.bin.seqID:
		health.Secondary.Err = fmt.Errorf("%w: secondary header is stale (seqid %d, primary %d)", ErrHeaderCorrupt, secondary.bin.seqID, primary.bin.seqID)
		return primary.state(), health, nil
	case primary.bin.seqID < secondary.bin.seqID:
		health.Primary.Err = fmt.Errorf("%w: primary header is stale (seqid %d, secondary %d)", ErrHeaderCorrupt, primary.bin.seqID, secondary.bin.seqID)
		return secondary.state(), health, nil
	}
	if !bytes.Equal(primary.text, secondary.text) {
		health.Secondary.Err = fmt.Errorf("%w: secondary header has the same seqid %d but different metadata", ErrHeaderCorrupt, primary.bin.seqID)
	}
	return primary.state(), health, nil
}

// isLUKS1 reports whether dev starts with a LUKS1 header: the LUKS magic and version 1
// (LUKS1 has no secondary copy, and its binary header has another layout).
func isLUKS1(dev Device) bool {
	b := make([]byte, offVersion+2)
	if _, err := dev.ReadAt(b, 0); err != nil {
		return false
	}
	return bytes.Equal(b[offMagic:offMagic+len(magicPrimary)], magicPrimary) && binary.BigEndian.Uint16(b[offVersion:]) == 1
}

// copyState is one fully validated header copy. It is never changed once made.
type copyState struct {
	bin *binHeader
	// raw is the binary header as on disk (see keepRaw): nil when it is exactly what
	// marshalling bin gives (as this package and cryptsetup write it); else its first
	// binHeaderUsed bytes when all the rest is zero; else all binHeaderSize bytes.
	raw []byte
	// text is the JSON text. The JSON area is not kept: a valid copy's area is text
	// followed by zeros to the end (jsonText), so text and the area size, which is the
	// header size of bin, determine it.
	text []byte
	meta *metadata
}

// binHeaderUsed is the part of a binary header that holds fields, up to and including the
// checksum; the rest of its binHeaderSize bytes is padding, covered by the checksum.
const binHeaderUsed = offCsum + csumLen

// keepRaw returns what a copyState keeps of the binary header raw (binHeaderSize bytes),
// which parses as h: nil when raw is h.marshal(true) byte for byte (h then gives the
// bytes back), else a copy of its fields only when the padding after them is zero, else a
// copy of it all.
func keepRaw(raw []byte, h *binHeader) []byte {
	if !isZero(raw[binHeaderUsed:binHeaderSize]) {
		return bytes.Clone(raw[:binHeaderSize])
	}
	var fields [binHeaderUsed]byte
	h.marshalFields(&fields, true)
	if bytes.Equal(fields[:], raw[:binHeaderUsed]) {
		return nil
	}
	return bytes.Clone(raw[:binHeaderUsed])
}

// sameBytes reports whether raw and area, a binary header and JSON area just read, are byte
// for byte the copy c was made from. It is bytes.Equal over both, against the bytes c keeps
// in short form: raw as keepRaw kept it (c.bin's fields when nil) then zero padding, and an
// area of the size c.bin.hdrSize gives holding c.text then zeros (a copyState's area
// always has that form).
func (c *copyState) sameBytes(raw, area []byte) bool {
	kept := c.raw
	var fields [binHeaderUsed]byte
	if kept == nil {
		c.bin.marshalFields(&fields, true)
		kept = fields[:]
	}
	return len(raw) == binHeaderSize && bytes.Equal(kept, raw[:len(kept)]) && isZero(raw[len(kept):]) &&
		uint64(len(area)) == c.bin.hdrSize-binHeaderSize && len(c.text) < len(area) &&
		bytes.Equal(c.text, area[:len(c.text)]) && isZero(area[len(c.text):])
}

func (c *copyState) state() *state {
	return &state{bin: *c.bin, meta: c.meta, text: c.text}
}

// prefetchSize is how much of the device load reads at once before looking at it: both
// copies of a header of the default size, which is then read with one system call instead
// of four.
const prefetchSize = 2 * DefaultMetadataSize

// prefetched is a device whose first bytes were read ahead: reads within them are served
// from buf, others from the device. load reads through it; nothing is written through it.
type prefetched struct {
	Device
	buf    []byte // bytes [0, len(buf)) of the device, as one read returned them
	bufs   *Buffers
	handle *[]byte // buf's, to give back to bufs
}

// prefetch reads the first prefetchSize bytes of dev into a buffer from bufs. When that read
// fails, or returns less, only what it returned is served from memory: every other read goes
// to dev as before, and fails there as it would have. The caller calls release when done
// with what it read.
func prefetch(dev Device, bufs *Buffers) *prefetched {
	buf, handle := bufs.get(prefetchSize)
	n, _ := dev.ReadAt(buf, 0)
	return &prefetched{Device: dev, buf: buf[:max(min(n, len(buf)), 0)], bufs: bufs, handle: handle}
}

// release gives the read-ahead buffer back; reads must not be served from it afterwards.
func (p *prefetched) release() {
	p.buf = nil
	if p.handle != nil {
		p.bufs.put(p.handle)
		p.handle = nil
	}
}

// read returns n bytes at off: a slice of the bytes read ahead when they hold them (the
// caller must not change or keep it), else a new buffer read from the device.
func (p *prefetched) read(off uint64, n int) ([]byte, error) {
	if off <= uint64(len(p.buf)) && uint64(n) <= uint64(len(p.buf))-off {
		return p.buf[off : off+uint64(n) : off+uint64(n)], nil
	}
	buf := make([]byte, n)
	_, err := p.Device.ReadAt(buf, int64(off))
	return buf, err
}

// readAt reads n bytes at off from dev, through its read-ahead when it is prefetched.
func readAt(dev Device, off uint64, n int) ([]byte, error) {
	if p, ok := dev.(*prefetched); ok {
		return p.read(off, n)
	}
	buf := make([]byte, n)
	_, err := dev.ReadAt(buf, int64(off))
	return buf, err
}

// readBinHeader reads and parses the binary header at off, and returns it with its bytes as
// read, over which the checksum is verified.
// Its text fields are taken from like (when not nil) when they are the same.
func readBinHeader(dev Device, off uint64, like *binHeader) (*binHeader, []byte, error) {
	buf, err := readAt(dev, off, binHeaderSize)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("%w: device too small for a header at %d", ErrHeaderCorrupt, off)
		}
		return nil, nil, fmt.Errorf("keyslot: reading header at %d: %w", off, err)
	}
	h, err := parseBinHeaderLike(buf, like)
	return h, buf, err
}

// pairedSums holds the checksums of the primary copy and of the secondary at the primary's
// header size, computed together (diskChecksumPair) before either copy is checked.
type pairedSums struct {
	ok                 bool
	secondaryAt        uint64
	primary, secondary [csumLen]byte
}

// at returns the checksum computed for the copy at off, or nil.
func (s *pairedSums) at(off uint64) *[csumLen]byte {
	switch {
	case !s.ok:
		return nil
	case off == 0:
		return &s.primary
	case off == s.secondaryAt:
		return &s.secondary
	}
	return nil
}

// pairChecksums computes, in one pass, the SHA-256 checksums of the primary copy (header h,
// raw as read) and of the secondary copy at h.hdrSize, over the bytes load read ahead, when
// both copies lie in them, both headers name sha256 and the same size, SHA-NI is there, and
// neither copy is as verified holds it (then checkCopy computes no checksum for it anyway).
// Otherwise it computes nothing, and each copy's checksum is computed when it is checked.
// The checksums are those of the bytes checkCopy then checks, which come from the same
// read-ahead buffer.
func pairChecksums(pf *prefetched, h *binHeader, raw []byte, verified map[uint64]*copyState) pairedSums {
	var s pairedSums
	size := h.hdrSize
	if !hasSHANI || h.csumAlg != "sha256" || size > uint64(len(pf.buf))/2 {
		return s
	}
	sraw := pf.buf[size : size+binHeaderSize]
	if !bytes.HasPrefix(sraw, magicSecondary) || binary.BigEndian.Uint64(sraw[offHdrSize:]) != size {
		return s
	}
	if alg := sraw[offCsumAlg : offCsumAlg+csumAlgLen]; !bytes.HasPrefix(alg, []byte("sha256\x00")) {
		return s
	}
	parea := pf.buf[binHeaderSize:size]
	sarea := pf.buf[size+binHeaderSize : 2*size]
	if v := verified[0]; v != nil && v.sameBytes(raw, parea) {
		return s
	}
	if v := verified[size]; v != nil && v.sameBytes(sraw, sarea) {
		return s
	}
	var err error
	if s.primary, s.secondary, err = diskChecksumPair("sha256", raw, sraw, parea, sarea); err != nil {
		return pairedSums{}
	}
	s.ok, s.secondaryAt = true, size
	return s
}

// verifiedBin returns the binary header of verified[off], or nil.
func verifiedBin(verified map[uint64]*copyState, off uint64) *binHeader {
	if v := verified[off]; v != nil {
		return v.bin
	}
	return nil
}

// How far readCopy got before it refused a copy; a higher stage is a more specific error.
const (
	stageNoHeader  = iota // no binary header here (bad magic, short device)
	stageBadHeader        // a LUKS magic, but a binary header with a bad field (version, size, strings)
	stageWrongCopy        // a binary header, but not the copy expected at this offset
	stageChecksum         // the copy expected here, with a bad checksum
	stageMetadata         // a whole copy whose JSON metadata is refused
)

// readCopy reads and fully validates the header copy at off. When its JSON text is byte for
// byte that of same (the other copy, already validated), the parsed metadata is shared
// instead of parsed again. On error it also returns how far it got (a stage… constant).
// A copy byte for byte as verified[off] is that copy, with no checksum computed or metadata
// parsed again; a copy found whole and valid is recorded in verified (when not nil).
func readCopy(dev Device, off uint64, secondary bool, same *copyState, verified map[uint64]*copyState, bufs *Buffers, sum *[csumLen]byte) (*copyState, int, error) {
	h, raw, err := readBinHeader(dev, off, verifiedBin(verified, off))
	if err != nil {
		if len(raw) >= len(magicPrimary) && (bytes.HasPrefix(raw, magicPrimary) || bytes.HasPrefix(raw, magicSecondary)) {
			return nil, stageBadHeader, err
		}
		return nil, stageNoHeader, err
	}
	return checkCopy(dev, off, secondary, h, raw, same, verified, bufs, sum)
}

// checkCopy is readCopy once the binary header h (raw as read) is parsed. Its parse
// borrows from bufs. sum, when not nil, is the copy's checksum computed beforehand by
// pairChecksums from the same bytes (a SHA-256 one, used only when h names sha256).
func checkCopy(dev Device, off uint64, secondary bool, h *binHeader, raw []byte, same *copyState, verified map[uint64]*copyState, bufs *Buffers, sum *[csumLen]byte) (*copyState, int, error) {
	if h.secondary != secondary {
		return nil, stageWrongCopy, fmt.Errorf("%w: wrong magic for the %s header at %d", ErrHeaderCorrupt, copyName(secondary), off)
	}
	if h.hdrOffset != off {
		return nil, stageWrongCopy, fmt.Errorf("%w: header at %d says it belongs at %d", ErrHeaderCorrupt, off, h.hdrOffset)
	}
	if secondary && h.hdrSize != off {
		return nil, stageWrongCopy, fmt.Errorf("%w: secondary header at %d has header size %d", ErrHeaderCorrupt, off, h.hdrSize)
	}
	area, err := readAt(dev, off+binHeaderSize, int(h.hdrSize-binHeaderSize))
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, stageWrongCopy, fmt.Errorf("%w: device too small for the JSON area at %d", ErrHeaderCorrupt, off+binHeaderSize)
		}
		return nil, stageWrongCopy, fmt.Errorf("keyslot: reading JSON area at %d: %w", off+binHeaderSize, err)
	}
	if v := verified[off]; v != nil && v.sameBytes(raw, area) {
		// The same bytes as a copy already checked: the same checksum, text and metadata.
		return v, 0, nil
	}
	var csum [csumLen]byte
	if sum != nil && h.csumAlg == "sha256" {
		csum = *sum
	} else if csum, err = diskChecksum(h.csumAlg, raw, area); err != nil {
		return nil, stageChecksum, err
	}
	if csum != h.csum {
		return nil, stageChecksum, fmt.Errorf("%w: %s header checksum mismatch", ErrHeaderCorrupt, copyName(secondary))
	}
	text, err := jsonText(area)
	if err != nil {
		return nil, stageMetadata, err
	}
	// raw and area may be slices of load's read-ahead buffer: keep copies.
	c := &copyState{bin: h, raw: keepRaw(raw, h)}
	if same != nil && same.bin.hdrSize == h.hdrSize && bytes.Equal(same.text, text) {
		c.text, c.meta = same.text, same.meta
	} else {
		c.text = bytes.Clone(text)
		if c.meta, err = parseMetadataIn(c.text, h.hdrSize, bufs); err != nil {
			return nil, stageMetadata, err // the caller names the copy
		}
	}
	if verified != nil {
		verified[off] = c
	}
	return c, 0, nil
}

func copyName(secondary bool) string {
	if secondary {
		return "secondary"
	}
	return "primary"
}

// Lock waits: a context that can end makes every lock a series of non-blocking attempts,
// lockFirstWait apart at first and doubling up to lockMaxWait, so that a caller can give up on
// a lock another process holds (across a slow operation, or forever if it hangs).
const (
	lockFirstWait = time.Millisecond
	lockMaxWait   = 50 * time.Millisecond
)

// acquire calls try until it succeeds or fails, waiting between attempts, and returns an error
// wrapping ctx.Err() when ctx ends first.
func acquire(ctx context.Context, try func() (bool, error)) error {
	wait := lockFirstWait
	var t *time.Timer
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("keyslot: waiting for the image lock: %w", err)
		}
		ok, err := try()
		if err != nil || ok {
			return err
		}
		if t == nil {
			t = time.NewTimer(wait)
			defer t.Stop()
		} else {
			t.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("keyslot: waiting for the image lock: %w", ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, lockMaxWait)
	}
}

// lockMutex locks mu, giving up when ctx ends. A context that never ends waits as mu.Lock.
func lockMutex(ctx context.Context, mu *sync.Mutex) error {
	if ctx.Done() == nil {
		mu.Lock()
		return nil
	}
	return acquire(ctx, func() (bool, error) { return mu.TryLock(), nil })
}

// lockDevice takes flock(2) on devices that have a file descriptor. With a context that can
// end, it makes non-blocking attempts until the lock is free or ctx ends; with one that never
// ends, it blocks in flock.
func lockDevice(ctx context.Context, dev Device, how int) (func(), error) {
	f, ok := dev.(interface{ Fd() uintptr })
	if !ok {
		return func() {}, nil
	}
	fd := int(f.Fd())
	flock := func(how int) (bool, error) {
		for {
			err := unix.Flock(fd, how)
			switch {
			case err == nil:
				return true, nil
			case err == unix.EWOULDBLOCK && how&unix.LOCK_NB != 0:
				return false, nil
			case err != unix.EINTR:
				return false, fmt.Errorf("keyslot: locking the image: %w", err)
			}
		}
	}
	var err error
	if ctx.Done() == nil {
		_, err = flock(how)
	} else {
		err = acquire(ctx, func() (bool, error) { return flock(how | unix.LOCK_NB) })
	}
	if err != nil {
		return nil, err
	}
	return func() { _ = unix.Flock(fd, unix.LOCK_UN) }, nil
}

// syncDevice makes written data durable on devices that can.
func syncDevice(dev Device) error {
	if s, ok := dev.(interface{ Sync() error }); ok {
		return s.Sync()
	}
	return nil
}
