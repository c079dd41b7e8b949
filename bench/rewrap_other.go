//go:build !linux

package bench

// statfsType names the file system dir is on: "unknown" off Linux.
func statfsType(dir string) string { return "unknown" }
