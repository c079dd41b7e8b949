//go:build !linux

package bench

import "time"

// statfsType names the file system dir is on: "unknown" off Linux.
func statfsType(dir string) string { return "unknown" }

// processCPU returns 0: the CPU time is measured on Linux only.
func processCPU() time.Duration { return 0 }
