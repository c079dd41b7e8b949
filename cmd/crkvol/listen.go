package main

import (
	"context"
	"net"
)

// checkListenSyntax returns a usage error unless addr, the value of kms serve's --listen,
// is HOST:PORT with a port of 0 to 65535 or a service name (the host may be empty, for every
// interface). Whether the host is loopback is checkListen's matter.
func checkListenSyntax(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err == nil && port != "" {
		_, err = net.DefaultResolver.LookupPort(context.Background(), "tcp", port)
	}
	if err != nil || port == "" {
		return usagef("--listen %s: want HOST:PORT such as 127.0.0.1:8410", addr)
	}
	return nil
}
