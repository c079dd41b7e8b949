package sector

// The AES key schedule in Go, for the assembly paths (crypto/aes does not expose its round
// keys). Round keys are kept as bytes in the order AES-NI loads them.

// maxRounds is the number of rounds of AES-256.
const maxRounds = 14

// schedule holds the expanded keys of one AES key.
type schedule struct {
	rounds int                        // 10 (AES-128) or 14 (AES-256)
	enc    [(maxRounds + 1) * 16]byte // encryption round keys 0..rounds
	dec    [(maxRounds + 1) * 16]byte // decryption round keys for AESDEC (equivalent inverse cipher)
}

// sbox is the AES S-box, computed from its definition (multiplicative inverse in GF(2^8)
// followed by the affine map).
var sbox = func() (s [256]byte) {
	for i := range 256 {
		inv := byte(0)
		if i != 0 {
			for j := 1; j < 256; j++ {
				if gmul(byte(i), byte(j)) == 1 {
					inv = byte(j)
					break
				}
			}
		}
		x := inv
		s[i] = x ^ rotl8(x, 1) ^ rotl8(x, 2) ^ rotl8(x, 3) ^ rotl8(x, 4) ^ 0x63
	}
	return s
}()

func rotl8(x byte, n uint) byte { return x<<n | x>>(8-n) }

// gmul multiplies in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1.
func gmul(a, b byte) byte {
	var p byte
	for b != 0 {
		if b&1 != 0 {
			p ^= a
		}
		hi := a & 0x80
		a <<= 1
		if hi != 0 {
			a ^= 0x1b
		}
		b >>= 1
	}
	return p
}

// expand computes the schedule of a 16- or 32-byte AES key (FIPS-197 section 5.2).
func (s *schedule) expand(key []byte) {
	nk := len(key) / 4
	s.rounds = nk + 6
	n := 4 * (s.rounds + 1)
	var w [4 * (maxRounds + 1)][4]byte
	for i := range nk {
		copy(w[i][:], key[4*i:])
	}
	rcon := byte(1)
	for i := nk; i < n; i++ {
		t := w[i-1]
		if i%nk == 0 {
			t = [4]byte{sbox[t[1]] ^ rcon, sbox[t[2]], sbox[t[3]], sbox[t[0]]}
			rcon = gmul(rcon, 2)
		} else if nk > 6 && i%nk == 4 {
			t = [4]byte{sbox[t[0]], sbox[t[1]], sbox[t[2]], sbox[t[3]]}
		}
		for j := range 4 {
			w[i][j] = w[i-nk][j] ^ t[j]
		}
	}
	for i := range n {
		copy(s.enc[4*i:], w[i][:])
	}
	// Decryption keys: the encryption keys in reverse order, all but the first and last
	// passed through InvMixColumns.
	for r := 0; r <= s.rounds; r++ {
		src := s.enc[16*(s.rounds-r) : 16*(s.rounds-r)+16]
		dst := s.dec[16*r : 16*r+16]
		if r == 0 || r == s.rounds {
			copy(dst, src)
			continue
		}
		for c := range 4 {
			a0, a1, a2, a3 := src[4*c], src[4*c+1], src[4*c+2], src[4*c+3]
			dst[4*c] = gmul(a0, 14) ^ gmul(a1, 11) ^ gmul(a2, 13) ^ gmul(a3, 9)
			dst[4*c+1] = gmul(a0, 9) ^ gmul(a1, 14) ^ gmul(a2, 11) ^ gmul(a3, 13)
			dst[4*c+2] = gmul(a0, 13) ^ gmul(a1, 9) ^ gmul(a2, 14) ^ gmul(a3, 11)
			dst[4*c+3] = gmul(a0, 11) ^ gmul(a1, 13) ^ gmul(a2, 9) ^ gmul(a3, 14)
		}
	}
}

// wideKeys is the size of one key schedule with every round key broadcast to four 128-bit
// lanes, as the VAES assembly reads it.
const wideKeys = (maxRounds + 1) * 64

// broadcastRounds writes each 16-byte round key of keys four times into dst.
func broadcastRounds(dst, keys []byte) {
	for r := range len(keys) / 16 {
		for l := range 4 {
			copy(dst[64*r+16*l:64*r+16*l+16], keys[16*r:16*r+16])
		}
	}
}

// wipe zeroes the round keys.
func (s *schedule) wipe() {
	clear(s.enc[:])
	clear(s.dec[:])
}
