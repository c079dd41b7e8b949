package sector

import (
	"errors"
	"fmt"
)

// ErrNoCeiling is returned by [CeilingLoop] for a path that has no ceiling loop here: the
// portable path (crypto/aes sets its own limit), a path this build or CPU does not run, or
// a name that is no path.
var ErrNoCeiling = errors.New("sector: no ceiling loop")

// ceilingChunk is the most iterations one assembly call runs: the loop cannot be preempted,
// so CeilingLoop splits longer runs into calls of well under a millisecond.
const ceilingChunk = 256

// CeilingLoop runs the ceiling loop of path for the given number of iterations and returns
// the bytes of AES-256 they stand for. The loop is nothing but the path's AES round
// instruction on independent registers (VAESENC on 512-bit registers for [PathVAES],
// 16 chains of four blocks; AESENC on 128-bit registers for [PathAESNI], 14 chains), each
// chain running the 14 rounds of AES-256 once per iteration, so bytes per second of
// CeilingLoop is what the CPU's AES units can do at most, and a path's MB/s over it is the
// share of that limit the path reaches. Bytes are counted as the path counts them:
// 16 bytes a block, the blocks encrypted by the 14 rounds (the XTS tweak, one block a sector,
// is not counted). It computes nothing useful and touches no memory.
//
// It fails with [ErrNoCeiling] for [PathGeneric], for a path that is not in [Paths] (a
// -tags purego build, a CPU without the instructions) and for an unknown path; and it
// refuses a negative iteration count.
func CeilingLoop(path Path, iterations int) (int64, error) {
	if iterations < 0 {
		return 0, fmt.Errorf("sector: ceiling loop: negative iteration count %d", iterations)
	}
	loop, bytes := ceilingFor(path)
	if loop == nil {
		return 0, fmt.Errorf("%w for %q here (paths: %v)", ErrNoCeiling, path, available())
	}
	for n := iterations; n > 0; n -= ceilingChunk {
		loop(min(n, ceilingChunk))
	}
	return int64(iterations) * int64(bytes), nil
}
