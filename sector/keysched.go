package sector

// The AES round keys of the assembly paths, kept as bytes in the order AES-NI loads them
// (crypto/aes does not expose its round keys). They are expanded by AES-NI itself
// (AESKEYGENASSIST and AESIMC, in xts_amd64.s), so no secret key byte ever indexes a table
// in this package. Builds without the assembly (other architectures, -tags purego or a
// compiler other than gc) run only PathGeneric, whose keys crypto/aes expands, and never
// expand a schedule here.

// maxRounds is the number of rounds of AES-256.
const maxRounds = 14

// schedule holds the expanded keys of one AES key.
type schedule struct {
	rounds int                        // 10 (AES-128) or 14 (AES-256)
	enc    [(maxRounds + 1) * 16]byte // encryption round keys 0..rounds
	dec    [(maxRounds + 1) * 16]byte // decryption round keys for AESDEC (equivalent inverse cipher)
}

// wideKeys is the size of one key schedule with every round key broadcast to four 128-bit
// lanes, as the VAES assembly reads it.
const wideKeys = (maxRounds + 1) * 64

// wipe zeroes the round keys.
func (s *schedule) wipe() {
	clear(s.enc[:])
	clear(s.dec[:])
}
