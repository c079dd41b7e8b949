package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestSchedulerHolderUnique: two replicas with the same host name, process id and listen
// address (containers: pid 1, the same port) still get different lease holder names, which
// keep the host, pid and listen address for the operator and end with the listen address.
func TestSchedulerHolderUnique(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	for _, listen := range []string{"127.0.0.1:8200", "[::]:8200", ":0"} {
		t.Run(listen, func(t *testing.T) {
			seen := map[string]bool{}
			for range 50 {
				h := schedulerHolder(listen)
				assert.True(t, strings.HasPrefix(h, fmt.Sprintf("%s/%d/", host, os.Getpid())), h)
				assert.True(t, strings.HasSuffix(h, "/"+listen), h)
				assert.False(t, seen[h], "holder name %s given twice", h)
				seen[h] = true
			}
		})
	}
}
