// Command gen writes ../xts_amd64.s, the AES-NI and VAES implementations of aes-xts-plain64,
// the AES-NI key schedule and the two paths' ceiling loops (see func ceiling) for package
// sector. go generate in package sector runs it (see the //go:generate line in
// ../xts_amd64.go); by hand, from this directory:
//
//	go run . -out ../xts_amd64.s
//
// Without -out it writes to standard output. .ci/check-generated regenerates the file and
// fails if it differs from the committed one. Each routine is preceded by a "// Requires:"
// line listing the CPU features its instructions need (as avo writes it), computed from the
// instructions emitted (see requires).
//
// The AES-NI bulk routines keep eight blocks in flight (X0-X7); their tweaks wait in the frame,
// so two registers can hold round keys loaded once per round. Tweaks are multiplied by α in
// GF(2^128) with the VPSRAD/VPADDQ/VPSHUFD/VPAND sequence where a tweak is waited for, and
// with general-purpose registers where they are made ahead. All AES-NI instructions are
// VEX-encoded (AVX), whose memory operands need no alignment: the round keys live in an
// ordinary Go array. The VAES routines are described at func vaes.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"regexp"
	"slices"
	"strings"
)

var b strings.Builder

func p(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }

// double sets X(dst) = X(src)·α using X(tmp) as scratch.
func double(dst, src, tmp int) {
	p("\tVPSRAD $31, X%d, X%d", src, tmp)
	p("\tVPADDQ X%d, X%d, X%d", src, src, dst)
	p("\tVPSHUFD $0x13, X%d, X%d", tmp, tmp)
	p("\tVPAND gfmask<>(SB), X%d, X%d", tmp, tmp)
	p("\tVPXOR X%d, X%d, X%d", tmp, dst, dst)
}

// rounds applies rounds 1..nr-1 and the last round to X0..X(n-1). R8 points at the round
// keys, R9 at the last one, CX holds nr (10 or 14).
func rounds(op string, n int, label string) {
	for r := 1; r <= 9; r++ {
		for i := 0; i < n; i++ {
			p("\tV%s %d(R8), X%d, X%d", op, 16*r, i, i)
		}
	}
	p("\tCMPQ CX, $10")
	p("\tJEQ %s", label)
	for r := 10; r <= 13; r++ {
		for i := 0; i < n; i++ {
			p("\tV%s %d(R8), X%d, X%d", op, 16*r, i, i)
		}
	}
	p("%s:", label)
	for i := 0; i < n; i++ {
		p("\tV%sLAST (R9), X%d, X%d", op, i, i)
	}
}

// bulk writes func name(nr int, rk, tk *byte, dst, src *byte, n int, seq uint64): n blocks
// of one data unit whose sector number seq it encrypts itself with the tweak key tk, without
// a call or a trip through memory between the two.
//
// Eight blocks are in flight in X0-X7, with the round keys loaded once per round into
// X11/X12, round key 0 in X13 and the last in X14. Their tweaks are made a group of eight
// ahead and parked in the frame: the first group's with vector doublings (makeTweaks), as
// the rounds wait for them; every later group's between the current group's rounds with
// general-purpose registers (makeTweaksGPR), which keeps them off the vector pipes: on Zen 4
// these issue only a few instructions a cycle beside two AESENC, and the vector doublings
// slowed the bulk loop. R12:R13 hold the tweak of the first block not yet parked; R10
// and R11 point at the current and the next half of the frame.
func bulk(name, op string) {
	p("")
	p("// func %s(nr int, rk, tk *byte, dst, src *byte, n int, seq uint64)", name)
	p("TEXT ·%s(SB),NOSPLIT,$256-56", name)
	p("\tMOVQ nr+0(FP), CX")
	p("\tMOVQ rk+8(FP), R8")
	p("\tMOVQ tk+16(FP), AX")
	p("\tMOVQ dst+24(FP), DI")
	p("\tMOVQ src+32(FP), SI")
	p("\tMOVQ n+40(FP), DX")
	p("\tVMOVQ seq+48(FP), X8") // [seq, 0]: the plain64 IV
	p("\tMOVQ CX, R9")
	p("\tSHLQ $4, R9")
	p("\tMOVQ R9, BX")
	p("\tADDQ R8, R9")
	p("\tADDQ AX, BX") // the tweak key's last round
	p("\tVPXOR (AX), X8, X8")
	for r := 1; r <= 13; r++ {
		if r == 10 {
			p("\tCMPQ CX, $10")
			p("\tJEQ %s_tlast", name)
		}
		p("\tVAESENC %d(AX), X8, X8", 16*r)
	}
	p("%s_tlast:", name)
	p("\tVAESENCLAST (BX), X8, X8")
	p("\tCMPQ DX, $8")
	p("\tJB %s_tail", name)
	p("\tVMOVDQU (R8), X13")
	p("\tVMOVDQU (R9), X14")
	p("\tLEAQ 0(SP), R10")
	p("\tLEAQ 128(SP), R11")
	makeTweaks("R10")
	p("\tVMOVQ X8, R12")
	p("\tVPEXTRQ $1, X8, R13")
	p("%s_loop8:", name)
	for i := 0; i < 8; i++ {
		p("\tVMOVDQU %d(SI), X%d", 16*i, i)
		p("\tVPXOR %d(R10), X%d, X%d", 16*i, i, i)
		p("\tVPXOR X13, X%d, X%d", i, i)
	}
	key := func(r int) int {
		reg := 11 + r%2
		p("\tVMOVDQU %d(R8), X%d", 16*r, reg)
		return reg
	}
	for r := 1; r <= 9; r++ {
		k := key(r)
		for i := 0; i < 8; i++ {
			p("\tV%s X%d, X%d, X%d", op, k, i, i)
		}
		if r == 2 { // the next group's tweaks, if another whole group follows
			p("\tCMPQ DX, $16")
			p("\tJB %s_nogen", name)
			makeTweaksGPR("R11")
			p("%s_nogen:", name)
		}
	}
	p("\tCMPQ CX, $10")
	p("\tJEQ %s_last8", name)
	for r := 10; r <= 13; r++ {
		k := key(r)
		for i := 0; i < 8; i++ {
			p("\tV%s X%d, X%d, X%d", op, k, i, i)
		}
	}
	p("%s_last8:", name)
	for i := 0; i < 8; i++ {
		p("\tV%sLAST X14, X%d, X%d", op, i, i)
		p("\tVPXOR %d(R10), X%d, X%d", 16*i, i, i)
		p("\tVMOVDQU X%d, %d(DI)", i, 16*i)
	}
	p("\tADDQ $128, SI")
	p("\tADDQ $128, DI")
	p("\tSUBQ $8, DX")
	p("\tXCHGQ R10, R11")
	p("\tCMPQ DX, $8")
	p("\tJAE %s_loop8", name)
	// The single-block tail continues from the next tweak, which R12:R13 hold.
	p("\tVMOVQ R12, X8")
	p("\tVPINSRQ $1, R13, X8, X8")
	p("%s_tail:", name)
	p("\tTESTQ DX, DX")
	p("\tJEQ %s_done", name)
	p("%s_loop1:", name)
	p("\tVPXOR (SI), X8, X0")
	p("\tVPXOR (R8), X0, X0")
	rounds(op, 1, name+"_last1")
	p("\tVPXOR X8, X0, X0")
	p("\tVMOVDQU X0, (DI)")
	double(8, 8, 1)
	p("\tADDQ $16, SI")
	p("\tADDQ $16, DI")
	p("\tDECQ DX")
	p("\tJNE %s_loop1", name)
	p("%s_done:", name)
	p("\tRET")
}

// makeTweaks parks the eight tweaks from X8 on at 0-127(buf) and advances X8 by eight
// blocks, with vector doublings. It uses X9 and X10.
func makeTweaks(buf string) {
	for i := 0; i < 8; i++ {
		t := 8
		if i == 1 {
			t = 9
			double(9, 8, 10)
		} else if i > 1 {
			t = 9
			double(9, 9, 10)
		}
		p("\tVMOVDQU X%d, %d(%s)", t, 16*i, buf)
	}
	double(8, 9, 10)
}

// makeTweaksGPR parks the eight tweaks from R12:R13 (low, high quadword) on at 0-127(buf)
// and advances R12:R13 by eight blocks. A doubling is ADD/ADC (the shift, with the carry
// between the quadwords), SBB (all ones if a bit left the high quadword) and the 0x87
// reduction masked in. It uses R14. The group's loads read these stores a group later,
// when they have long been written (a 16-byte load cannot take its bytes from two 8-byte
// stores still in flight).
func makeTweaksGPR(buf string) {
	for i := 0; i < 8; i++ {
		p("\tMOVQ R12, %d(%s)", 16*i, buf)
		p("\tMOVQ R13, %d(%s)", 16*i+8, buf)
		p("\tADDQ R12, R12")
		p("\tADCQ R13, R13")
		p("\tSBBQ R14, R14")
		p("\tANDQ $0x87, R14")
		p("\tXORQ R14, R12")
	}
}

// vaes writes func name(nr int, rk, tk *byte, dst, src *byte, sectors, blocks int, seq uint64,
// offs *[80]byte): XTS over `sectors` data units of `blocks` 16-byte blocks each (a multiple
// of 32), the first with sector number seq, each next one offs[16..] further (offs holds the
// lane offsets 0, step, 2·step, 3·step in the low quadword of each 128-bit lane, and 4·step
// after them). rk are the data round keys (encryption or decryption), tk the tweak key's
// encryption round keys, each round key stored broadcast to four lanes (64 bytes).
//
// Everything runs on 512-bit registers with VAES: Z0-Z3 hold sixteen blocks, Z4-Z7 their
// tweaks (and Z8, Z11, Z12, Z14 the next 16 blocks'), Z16-Z31 the data round keys; per-lane
// shift counts in memory and one carry-less multiply turn a broadcast tweak t into
// [tα^4k, …, tα^(4k+3)] (see expand and expandLone).
// The initial tweaks of four sectors at a time are made together in Z13 (their sector
// numbers encrypted with the tweak key, read from memory round by round), so no sector waits
// alone for its tweak; a lone sector encrypts its number in all four lanes of Z8. AX counts
// the sectors whose tweaks are left in Z13; the next group's tweaks are made in Z15 during
// the current group's first half-sector, and mask register K1 says they are there (see
// vaesHalf). R11 is the next group's first sector number, R12 points at offs, R15 holds
// 4·step. Whitening and round key 0 are one VPTERNLOGQ; tweaks advance by α^16 per lane
// with byte shifts and VPTERNLOGQ (see mulAlpha). The call's last 32 blocks are final's.
func vaes(name, op string) {
	p("")
	p("// func %s(nr int, rk, tk *byte, dst, src *byte, sectors, blocks int, seq uint64, offs *[80]byte)", name)
	p("TEXT ·%s(SB),NOSPLIT,$0-72", name)
	p("\tMOVQ nr+0(FP), CX")
	p("\tMOVQ rk+8(FP), R8")
	p("\tMOVQ tk+16(FP), R13")
	p("\tMOVQ dst+24(FP), DI")
	p("\tMOVQ src+32(FP), SI")
	p("\tMOVQ sectors+40(FP), BX")
	p("\tMOVQ blocks+48(FP), R10")
	p("\tMOVQ seq+56(FP), R11")
	p("\tMOVQ offs+64(FP), R12")
	p("\tMOVQ CX, R9")
	p("\tSHLQ $6, R9") // 64 bytes a round key
	p("\tMOVQ R9, R14")
	p("\tADDQ R8, R9")
	p("\tADDQ R13, R14")     // last tweak-key round
	p("\tMOVQ 64(R12), R15") // 4·step
	p("\tXORQ AX, AX")       // sectors left in the current group of four tweaks
	p("\tKXORW K1, K1, K1")  // no next group's tweaks in Z15 yet
	p("%s_sector:", name)
	p("\tTESTQ BX, BX")
	p("\tJEQ %s_done", name)
	p("\tTESTQ AX, AX")
	p("\tJNE %s_havetweak", name)
	p("\tKORTESTW K1, K1")
	p("\tJNE %s_pipelined", name)
	// A lone sector encrypts its sector number in all four lanes of Z8 at once (the AES
	// units are idle while this dependent chain runs), so its tweak t arrives broadcast,
	// ready for the expansion without a lane shuffle.
	p("\tCMPQ BX, $1")
	p("\tJNE %s_tweak4", name)
	p("\tVPBROADCASTQ R11, Z8")
	p("\tVPANDQ lomask<>(SB), Z8, Z8")
	tweakRounds(name+"_tlast1", 8)
	broadcastKeys(name + "_lone")
	expandLone()
	p("\tJMP %s_expanded", name)
	p("%s_tweak4:", name)
	// Four sector numbers: seq + offs in each lane's low quadword, zero high quadwords.
	p("\tVPBROADCASTQ R11, Z13")
	p("\tVPANDQ lomask<>(SB), Z13, Z13")
	p("\tVPADDQ (R12), Z13, Z13")
	p("\tADDQ R15, R11")
	tweakRounds(name+"_tlast", 13)
	p("\tMOVQ $4, AX")
	// The data round keys are loaded after the first tweak is under way, so that the
	// tweak's dependent rounds enter the scheduler first.
	broadcastKeys(name)
	p("\tJMP %s_havetweak", name)
	// Every later group's tweaks were made in Z15 during its previous group (see vaesHalf).
	p("%s_pipelined:", name)
	p("\tVMOVDQA64 Z15, Z13")
	p("\tKXORW K1, K1, K1")
	p("\tMOVQ $4, AX")
	p("%s_havetweak:", name)
	// This sector's tweak is lane 0 of Z13: broadcast it, then rotate the lanes for the next.
	// The sixteen first tweaks t·α^0..15 are made side by side from the broadcast t in Z8,
	// each vector with its own per-lane shift counts, not one from another.
	p("\tVSHUFI64X2 $0x00, Z13, Z13, Z8")
	p("\tVSHUFI64X2 $0x39, Z13, Z13, Z13")
	p("\tDECQ AX")
	for k := 0; k < 4; k++ {
		expand(k, 4+k)
	}
	p("%s_expanded:", name)
	p("\tMOVQ R10, DX")
	// Unrolled twice (a sector has a multiple of 32 blocks): the first half's tweaks are
	// Z4-Z7 and it makes the second half's in Z8, Z11, Z12, Z14 early, between its rounds,
	// and the second half makes the next first half's back in Z4-Z7. The next blocks' tweaks
	// are then ready when their loads issue.
	setA := [4]int{4, 5, 6, 7}
	setB := [4]int{8, 11, 12, 14}
	p("%s_loop:", name)
	// The call's last 32 blocks end it in their own shape (see final).
	p("\tCMPQ BX, $1")
	p("\tJNE %s_notfinal", name)
	p("\tCMPQ DX, $32")
	p("\tJEQ %s_final", name)
	p("%s_notfinal:", name)
	// The first half of a group's first sector also encrypts the next group's sector
	// numbers, if another group follows.
	p("\tCMPQ AX, $3")
	p("\tJNE %s_plain", name)
	p("\tCMPQ DX, R10")
	p("\tJNE %s_plain", name)
	p("\tCMPQ BX, $4")
	p("\tJA %s_chain", name)
	p("%s_plain:", name)
	vaesHalf(name+"_a", op, setA, setB, false, false)
	p("%s_half2:", name)
	vaesHalf(name+"_b", op, setB, setA, true, false)
	p("\tSUBQ $32, DX")
	p("\tJNE %s_loop", name)
	p("\tDECQ BX")
	p("\tJMP %s_sector", name)
	p("%s_chain:", name)
	vaesHalf(name+"_c", op, setA, setB, false, true)
	p("\tJMP %s_half2", name)
	p("%s_final:", name)
	final(name, op)
	p("%s_done:", name)
	p("\tVZEROUPPER")
	p("\tRET")
}

// final writes the call's last 32 blocks (the end of its last sector), whose first 16
// tweaks are in Z4-Z7, and returns. It runs five vectors' rounds side by side, then the
// last three: while those three dependent chains leave one AES slot in four free, the
// caller's next call, already decoded, can run the 15 dependent rounds of its own tweak in
// them, instead of starting them only after this call's last round (the scheduler takes the
// oldest ready instruction, so a full pipe would keep them waiting); one sector per call ran
// faster this way on Zen 4, most at 512 bytes. The other 16 blocks' tweaks come from
// Z4-Z7 by α^16 (the fifth vector's before the rounds, in Z11, the rest after round 8).
func final(name, op string) {
	mulAlpha(11, 4, 16)
	five := [][2]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}, {13, 11}} // data, tweak
	three := [][2]int{{0, 12}, {1, 14}, {2, 8}}
	loadBlocks(five, 0)
	dataRounds(op, five, name+"_last5", func(r int) {
		if r == 8 {
			mulAlpha(12, 5, 16)
			mulAlpha(14, 6, 16)
			mulAlpha(8, 7, 16)
		}
	})
	storeBlocks(op, five, 0)
	loadBlocks(three, 5)
	dataRounds(op, three, name+"_last3", func(int) {})
	storeBlocks(op, three, 5)
}

// loadBlocks loads the vectors of set (data register, tweak register), from vector first of
// (SI) on, each XORed with its tweak and round key 0.
func loadBlocks(set [][2]int, first int) {
	for v, d := range set {
		p("\tVMOVDQU64 %d(SI), Z%d", 64*(first+v), d[0])
		p("\tVPTERNLOGQ $0x96, Z16, Z%d, Z%d", d[1], d[0])
	}
}

// dataRounds runs rounds 1 to 13 (9 for AES-128, jumping to label) on the data registers of
// set, calling after(r) after each round r, and writes label.
func dataRounds(op string, set [][2]int, label string, after func(r int)) {
	for r := 1; r <= 13; r++ {
		if r == 10 {
			p("\tCMPQ CX, $10")
			p("\tJEQ %s", label)
		}
		for _, d := range set {
			p("\tV%s Z%d, Z%d, Z%d", op, 16+r, d[0], d[0])
		}
		after(r)
	}
	p("%s:", label)
}

// storeBlocks runs the last round on the vectors of set, XORs their tweaks and stores them
// from vector first of (DI) on.
func storeBlocks(op string, set [][2]int, first int) {
	for v, d := range set {
		p("\tV%sLAST Z31, Z%d, Z%d", op, d[0], d[0])
		p("\tVPXORQ Z%d, Z%d, Z%d", d[1], d[0], d[0])
		p("\tVMOVDQU64 Z%d, %d(DI)", d[0], 64*(first+v))
	}
}

// vaesHalf writes 16 blocks of the VAES loop with tweaks in registers t, making the next 16
// blocks' tweaks (t·α^16) in registers n after round 4 (unless, when last is set, these are
// the sector's last 16 blocks: DX is then 32). In a first half (last unset) of a 512-byte
// sector, the second half's tweaks are made from t in Z8 after round 8 instead. With chain
// set it also encrypts the next group's four sector numbers (R11 + offs) into Z15, one round
// between each of its own, advances R11 by 4·step and sets K1.
func vaesHalf(label, op string, t, n [4]int, last, chain bool) {
	set := [][2]int{{0, t[0]}, {1, t[1]}, {2, t[2]}, {3, t[3]}}
	loadBlocks(set, 0)
	if chain {
		// The next group's four sector numbers, encrypted a round at a time between
		// these rounds: their 15 dependent rounds take 15 AES slots instead of making
		// the next group wait for their whole dependent chain.
		p("\tVPBROADCASTQ R11, Z15")
		p("\tVPANDQ lomask<>(SB), Z15, Z15")
		p("\tVPADDQ (R12), Z15, Z15")
		p("\tADDQ R15, R11")
		p("\tVPXORQ (R13), Z15, Z15")
	}
	dataRounds(op, set, label+"_last", func(r int) {
		if chain {
			p("\tVAESENC %d(R13), Z15, Z15", 64*r)
		}
		if r == 8 && !last {
			// A 512-byte sector is one pass of the loop: its second half's tweaks are made
			// from t like the first half's, late in the first half so that these
			// multiplies do not hold up its first rounds.
			p("\tCMPQ R10, $32")
			p("\tJNE %s_not512", label)
			for _, v := range [][2]int{{5, 11}, {6, 12}, {7, 14}, {4, 8}} { // Z8, t, last
				expand(v[0], v[1])
			}
			p("%s_not512:", label)
		}
		if r == 4 {
			if last {
				p("\tCMPQ DX, $32")
				p("\tJEQ %s_lastgroup", label)
			} else {
				p("\tCMPQ R10, $32") // made from t after round 8 instead
				p("\tJEQ %s_lastgroup", label)
			}
			for i := 0; i < 4; i++ {
				mulAlpha(n[i], t[i], 16)
			}
			p("%s_lastgroup:", label)
		}
	})
	if chain {
		p("\tVAESENCLAST (R14), Z15, Z15")
		p("\tKXNORW K1, K1, K1") // Z15 holds the next group's tweaks
	}
	storeBlocks(op, set, 0)
	p("\tADDQ $256, SI")
	p("\tADDQ $256, DI")
}

// broadcastKeys loads the data round keys, stored already broadcast, into Z16-Z30 (round r
// in Z16+r) and the last one into Z31. These are plain loads: a
// broadcast load from a 16-byte key also takes a shuffle pipe on Zen 4, which the tweak
// expansion that follows needs.
func broadcastKeys(label string) {
	for r := 0; r <= 10; r++ {
		p("\tVMOVDQU64 %d(R8), Z%d", 64*r, 16+r)
	}
	p("\tCMPQ CX, $10")
	p("\tJEQ %s_keysdone", label)
	for r := 11; r <= 14; r++ {
		p("\tVMOVDQU64 %d(R8), Z%d", 64*r, 16+r)
	}
	p("%s_keysdone:", label)
	p("\tVMOVDQU64 (R9), Z31")
}

// tweakRounds encrypts Z(z) with the tweak key, whose round keys are stored broadcast at
// R13 (64 bytes each, the last at R14) and read straight into VAESENC.
func tweakRounds(label string, z int) {
	p("\tVPXORQ (R13), Z%d, Z%d", z, z)
	for r := 1; r <= 13; r++ {
		if r == 10 {
			p("\tCMPQ CX, $10")
			p("\tJEQ %s", label)
		}
		p("\tVAESENC %d(R13), Z%d, Z%d", 64*r, z, z)
	}
	p("%s:", label)
	p("\tVAESENCLAST (R14), Z%d, Z%d", z, z)
}

// expandLone is expand for the four vectors of a lone sector's first sixteen tweaks, made
// with fewer instructions on the shift and shuffle pipes, where this waiting sector's first
// rounds are held up (on a stream of sectors, expand measured faster). With s = [0, t.lo]
// and h = [t.hi, t.hi] made once, VPSHLDVQ shifts each lane of t left by its count with the
// low quadword's bits carried into the high one, in one instruction, and one VPSRLVQ of h
// makes the carries out of two vectors' lanes (one in each quadword) for their carry-less
// multiplies by 0x87. It uses Z0-Z3 and Z9-Z10.
func expandLone() {
	p("\tVPSLLDQ $8, Z8, Z10")
	p("\tVPUNPCKHQDQ Z8, Z8, Z9")
	p("\tVPSRLVQ lanespair<>+0(SB), Z9, Z0")
	p("\tVPSRLVQ lanespair<>+64(SB), Z9, Z1")
	for k := 0; k < 4; k++ {
		p("\tVMOVDQA64 Z8, Z%d", 4+k)
		p("\tVPSHLDVQ lanesl<>+%d(SB), Z10, Z%d", 64*k, 4+k)
		p("\tVPCLMULQDQ $0x%02x, gf87<>(SB), Z%d, Z%d", k%2*0x01, k/2, 2+k%2)
		p("\tVPXORQ Z%d, Z%d, Z%d", 2+k%2, 4+k, 4+k)
	}
}

// expand sets Z(dst) = [tα^4k, tα^(4k+1), tα^(4k+2), tα^(4k+3)] (k < 8) from t broadcast in
// Z8, using Z9 and Z10: each lane shifts t left by its own count (the bits leaving the low
// quadword move into the high one), and the bits leaving the high quadword, at most 31, are
// reduced with one carry-less multiply by 0x87. This is five instructions a vector where
// shifts alone take ten. The multiply issues on the pipes VAESENC uses, so it is placed
// where those wait for these tweaks, or (a 512-byte sector's second half) late enough in
// the first half not to hold up its first rounds.
func expand(k, dst int) {
	p("\tVPSRLVQ lanesr<>+%d(SB), Z8, Z9", 64*k)
	p("\tVPSLLVQ lanesl<>+%d(SB), Z8, Z%d", 64*k, dst)
	p("\tVPSLLDQ $8, Z9, Z10")
	p("\tVPCLMULQDQ $0x01, gf87<>(SB), Z9, Z9")
	p("\tVPTERNLOGQ $0x96, Z10, Z9, Z%d", dst)
}

// mulAlpha sets Z(dst) = Z(src)·α^k in every 128-bit lane (k a multiple of 8, 0 < k < 57),
// using Z9 and Z10: a whole-byte shift of the lane carries between its quadwords by itself.
// It uses only shifts and VPTERNLOGQ: on AMD Zen 4 a 512-bit VPCLMULQDQ occupies the pipes
// that run VAESENC, and one per tweak vector slowed the bulk loop markedly.
func mulAlpha(dst, src, k int) {
	if k%8 != 0 || k <= 0 || k >= 57 {
		panic(fmt.Sprintf("mulAlpha: unsupported power %d", k))
	}
	p("\tVPSRLDQ $%d, Z%d, Z9", 16-k/8, src)
	p("\tVPSLLDQ $%d, Z%d, Z%d", k/8, src, dst)
	reduce(dst)
}

// reduce XORs c·0x87 into the low quadword of each lane of Z(dst), where c < 2^57 is in the
// low quadword of Z9 (and zero is in the high one): x^128 = x^7 + x^2 + x + 1. It clobbers
// Z9 and Z10. Seven instructions a vector with mulAlpha's two byte shifts: on Zen 4 the bulk
// loop issues about two 512-bit instructions a cycle, one of them VAESENC, so every
// instruction here counts (a variant with one more XOR measured slower at 4096 bytes).
func reduce(dst int) {
	p("\tVPSLLQ $1, Z9, Z10")
	p("\tVPTERNLOGQ $0x96, Z10, Z9, Z%d", dst)
	p("\tVPSLLQ $2, Z9, Z10")
	p("\tVPSLLQ $7, Z9, Z9")
	p("\tVPTERNLOGQ $0x96, Z10, Z9, Z%d", dst)
}

// expandKey writes func name(key, enc, dec *byte): the AES key schedule (FIPS-197 section
// 5.2) of a key of nk 32-bit words (4 for AES-128, 8 for AES-256) with AESKEYGENASSIST, so
// that no secret key byte indexes a table. It stores the nk+7 encryption round keys at enc
// and the decryption round keys for AESDEC (the equivalent inverse cipher: the encryption
// keys in reverse order, all but the first and last through AESIMC) at dec, 16 bytes each,
// and clears the registers that held key material before it returns.
//
// AESKEYGENASSIST applies SubWord to words 1 and 3 of its source, and RotWord and the round
// constant to copies: word 3 of its result is RotWord(SubWord(w)) ^ rcon for the last word w
// of the previous round key (the step of every nk-th word), and word 2 is SubWord(w) alone
// (the extra step of AES-256 in the middle of each eight words). Broadcast to four words and
// XORed into the prefix XOR of the previous round key of the same half, it gives the next
// round key. X0 holds the round key being made (and, for AES-256, X2 the other half), X1 the
// assist result, X3 the prefix XOR's shifted copies.
func expandKey(name string, nk int) {
	nr := nk + 6
	p("")
	p("// func %s(key, enc, dec *byte)", name)
	p("TEXT ·%s(SB),NOSPLIT,$0-24", name)
	p("\tMOVQ key+0(FP), AX")
	p("\tMOVQ enc+8(FP), BX")
	p("\tMOVQ dec+16(FP), DX")
	p("\tVMOVDQU (AX), X0")
	p("\tVMOVDQU X0, (BX)")
	// next sets X(dst) to the next round key from X(dst) and word sel of the assist result.
	next := func(dst, src, rcon int, sel string, r int) {
		p("\tVAESKEYGENASSIST $0x%02x, X%d, X1", rcon, src)
		p("\tVPSHUFD $%s, X1, X1", sel)
		p("\tVPSLLDQ $4, X%d, X3", dst)
		p("\tVPXOR X3, X%d, X%d", dst, dst)
		p("\tVPSLLDQ $4, X3, X3")
		p("\tVPXOR X3, X%d, X%d", dst, dst)
		p("\tVPSLLDQ $4, X3, X3")
		p("\tVPXOR X3, X%d, X%d", dst, dst)
		p("\tVPXOR X1, X%d, X%d", dst, dst)
		p("\tVMOVDQU X%d, %d(BX)", dst, 16*r)
	}
	rcon := 1
	nextRcon := func() {
		rcon <<= 1
		if rcon&0x100 != 0 {
			rcon ^= 0x11b
		}
	}
	if nk == 4 {
		for r := 1; r <= nr; r++ {
			next(0, 0, rcon, "0xff", r)
			nextRcon()
		}
	} else {
		p("\tVMOVDQU 16(AX), X2")
		p("\tVMOVDQU X2, 16(BX)")
		for r := 2; r <= nr; r += 2 {
			next(0, 2, rcon, "0xff", r)
			nextRcon()
			if r+1 <= nr {
				next(2, 0, 0, "0xaa", r+1)
			}
		}
	}
	// The decryption keys.
	p("\tVMOVDQU X0, (DX)")
	for r := 1; r < nr; r++ {
		p("\tVAESIMC %d(BX), X1", 16*(nr-r))
		p("\tVMOVDQU X1, %d(DX)", 16*r)
	}
	p("\tVMOVDQU (BX), X1")
	p("\tVMOVDQU X1, %d(DX)", 16*nr)
	for _, x := range []int{0, 1, 2, 3} {
		p("\tVPXOR X%d, X%d, X%d", x, x, x)
	}
	p("\tRET")
}

// ceiling writes func name(iterations int), the ceiling loop of a path: nothing but AES
// rounds, on `chains` independent registers (reg "Z" or "X"), each of which runs the 14 rounds
// of AES-256 (13 AESENC and one AESENCLAST) once per iteration, its only dependency its own
// previous round. With 16 chains of 512-bit VAESENC (four blocks each) or 14 of 128-bit AESENC
// in flight, more than a round's latency times the rounds issued a cycle, the latency is
// hidden and the loop runs as fast as the AES units allow: the upper bound of an XTS path
// built on these instructions (the real paths also load, XOR and store, and make tweaks).
// The round key is one register (key), zero like the data: AES takes the same time for every
// value. The registers hold no secret, so nothing is cleared.
func ceiling(name, reg string, chains, key int) {
	p("")
	p("// func %s(iterations int)", name)
	p("TEXT ·%s(SB),NOSPLIT,$0-8", name)
	p("\tMOVQ iterations+0(FP), CX")
	zero := "VPXOR"
	if reg == "Z" {
		zero = "VPXORQ"
	}
	for i := 0; i < chains; i++ {
		p("\t%s %s%d, %s%d, %s%d", zero, reg, i, reg, i, reg, i)
	}
	p("\t%s %s%d, %s%d, %s%d", zero, reg, key, reg, key, reg, key)
	p("\tTESTQ CX, CX")
	p("\tJEQ %s_done", name)
	p("%s_loop:", name)
	for r := 1; r <= 14; r++ {
		op := "VAESENC"
		if r == 14 {
			op = "VAESENCLAST"
		}
		for i := 0; i < chains; i++ {
			p("\t%s %s%d, %s%d, %s%d", op, reg, key, reg, i, reg, i)
		}
	}
	p("\tDECQ CX")
	p("\tJNE %s_loop", name)
	p("%s_done:", name)
	if reg == "Z" {
		p("\tVZEROUPPER")
	}
	p("\tRET")
}

// requires maps an instruction, and whether it has a 512-bit (Z) operand, to the CPU
// features it needs, named as avo names them. Base amd64 (general-purpose) instructions
// need none. A mnemonic missing here stops the generator, so a new instruction cannot
// leave a routine's Requires line short.
func requires(op string, zmm bool) ([]string, bool) {
	switch op {
	case "ADCQ", "ADDQ", "ANDQ", "CMPQ", "DECQ", "JA", "JAE", "JB", "JEQ", "JMP", "JNE",
		"LEAQ", "MOVQ", "RET", "SBBQ", "SHLQ", "SUBQ", "TESTQ", "XCHGQ", "XORQ":
		return nil, true
	case "VZEROUPPER":
		return []string{"AVX"}, true
	case "KORTESTW", "KXNORW", "KXORW":
		return []string{"AVX512F"}, true
	case "VAESENC", "VAESENCLAST", "VAESDEC", "VAESDECLAST":
		if zmm {
			return []string{"AVX512F", "VAES"}, true
		}
		return []string{"AES", "AVX"}, true
	case "VAESIMC", "VAESKEYGENASSIST":
		if zmm {
			return nil, false
		}
		return []string{"AES", "AVX"}, true
	case "VPCLMULQDQ":
		if zmm {
			return []string{"AVX512F", "VPCLMULQDQ"}, true
		}
		return []string{"AVX", "PCLMULQDQ"}, true
	case "VPSLLDQ", "VPSRLDQ":
		if zmm {
			return []string{"AVX512BW"}, true
		}
		return []string{"AVX"}, true
	case "VPSHLDVQ":
		if zmm {
			return []string{"AVX512VBMI2"}, true
		}
		return nil, false
	case "VMOVDQA64", "VMOVDQU64", "VPANDQ", "VPBROADCASTQ", "VPSLLVQ", "VPSRLVQ",
		"VPTERNLOGQ", "VPXORQ", "VSHUFI64X2":
		if zmm {
			return []string{"AVX512F"}, true
		}
		return nil, false
	case "VMOVDQU", "VMOVQ", "VPADDQ", "VPAND", "VPEXTRQ", "VPINSRQ", "VPSHUFD", "VPSLLQ",
		"VPSRAD", "VPUNPCKHQDQ", "VPXOR":
		if zmm {
			return []string{"AVX512F"}, true
		}
		return []string{"AVX"}, true
	}
	return nil, false
}

var zmmOperand = regexp.MustCompile(`\bZ[0-9]+\b`)

// addRequires inserts, after the "// func" line of each routine in text, a "// Requires:"
// line naming the CPU features of the routine's instructions, sorted.
func addRequires(text string) (string, error) {
	lines := strings.Split(text, "\n")
	var out []string
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if !strings.HasPrefix(line, "TEXT ") {
			out = append(out, line)
			continue
		}
		var feats []string
		for _, body := range lines[i+1:] {
			if strings.HasPrefix(body, "TEXT ") || strings.HasPrefix(body, "// func ") {
				break
			}
			if !strings.HasPrefix(body, "\t") {
				continue // a label, a blank line or a comment
			}
			op, _, _ := strings.Cut(strings.TrimSpace(body), " ")
			f, ok := requires(op, zmmOperand.MatchString(body))
			if !ok {
				return "", fmt.Errorf("%s: no CPU features known for %q", line, strings.TrimSpace(body))
			}
			feats = append(feats, f...)
		}
		slices.Sort(feats)
		feats = slices.Compact(feats)
		if len(feats) > 0 {
			out = append(out, "// Requires: "+strings.Join(feats, ", "))
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n"), nil
}

// perLane writes a 64-byte constant name<> holding lo, hi in each of the four 128-bit lanes.
func perLane(name string, lo, hi int64, comment string) {
	p("// %s", comment)
	for i := 0; i < 4; i++ {
		p("DATA %s<>+%d(SB)/8, $%d", name, 16*i, lo)
		p("DATA %s<>+%d(SB)/8, $%d", name, 16*i+8, hi)
	}
	p("GLOBL %s<>(SB), RODATA|NOPTR, $64", name)
	p("")
}

func main() {
	out := flag.String("out", "", "write the assembly to this file instead of standard output")
	flag.Parse()
	p("// Code generated by sector/_asm/gen.go; DO NOT EDIT.")
	p("")
	p("//go:build gc && !purego")
	p("")
	p("#include \"textflag.h\"")
	p("")
	p("// The reduction constant of GF(2^128) for the tweak doubling: 0x87 into the low")
	p("// quadword, and the carry from bit 63 into bit 64.")
	p("DATA gfmask<>+0(SB)/8, $0x87")
	p("DATA gfmask<>+8(SB)/8, $1")
	p("GLOBL gfmask<>(SB), RODATA|NOPTR, $16")
	p("")
	perLane("gf87", 0x87, 0, "0x87 in the low quadword of every 128-bit lane: the reduction multiplier of expand.")
	p("// Per-lane shift counts that make [tα^4k, tα^(4k+1), tα^(4k+2), tα^(4k+3)] from a")
	p("// broadcast t, for k = 0..7 (64 bytes each): left shifts 4k+j and the matching right")
	p("// shifts 64-(4k+j) (a count of 64 gives 0).")
	for i := 0; i < 32; i++ {
		p("DATA lanesl<>+%d(SB)/8, $%d", 16*i, i)
		p("DATA lanesl<>+%d(SB)/8, $%d", 16*i+8, i)
		p("DATA lanesr<>+%d(SB)/8, $%d", 16*i, 64-i)
		p("DATA lanesr<>+%d(SB)/8, $%d", 16*i+8, 64-i)
	}
	p("GLOBL lanesl<>(SB), RODATA|NOPTR, $512")
	p("GLOBL lanesr<>(SB), RODATA|NOPTR, $512")
	p("")
	p("// The right shifts of expandLone: for the vector pairs (0, 1) and (2, 3), lane j holds")
	p("// 64-(8m+j) in its low quadword and 64-(8m+4+j) in its high one.")
	for m := 0; m < 2; m++ {
		for l := 0; l < 4; l++ {
			p("DATA lanespair<>+%d(SB)/8, $%d", 64*m+16*l, 64-(8*m+l))
			p("DATA lanespair<>+%d(SB)/8, $%d", 64*m+16*l+8, 64-(8*m+4+l))
		}
	}
	p("GLOBL lanespair<>(SB), RODATA|NOPTR, $128")
	p("")
	perLane("lomask", -1, 0, "Keeps the low quadword of every 128-bit lane.")
	bulk("xtsEncAESNI", "AESENC")
	bulk("xtsDecAESNI", "AESDEC")
	vaes("xtsEncVAES", "AESENC")
	vaes("xtsDecVAES", "AESDEC")
	expandKey("expandKey128", 4)
	expandKey("expandKey256", 8)
	ceiling("ceilingVAES", "Z", 16, 16)
	ceiling("ceilingAESNI", "X", 14, 15)
	text, err := addRequires(b.String())
	if err != nil {
		log.Fatalf("gen: %v", err)
	}
	if *out == "" {
		_, err = os.Stdout.WriteString(text)
	} else {
		err = os.WriteFile(*out, []byte(text), 0o644)
	}
	if err != nil {
		log.Fatalf("gen: %v", err)
	}
}
