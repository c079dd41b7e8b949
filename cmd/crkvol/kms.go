package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"crkvol/crk/kpapi"
)

func (a *app) kmsCommand() *cobra.Command {
	k := group("kms", "Serve the Key Protect API v2, and manage its instances and API keys")

	var listen, cert, keyFile, static, addrFile string
	serve := &cobra.Command{Use: "serve", Short: "Serve the Key Protect API v2 on HTTP(S)", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (cert == "") != (keyFile == "") {
				return usagef("kms serve: give both --tls-cert and --tls-key, or neither")
			}
			tenants, err := a.tenants()
			if err != nil {
				return err
			}
			defer tenants.Close()
			if static != "" {
				tenants.SetStaticToken(static)
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("kms serve: %w", err)
			}
			srv := &http.Server{
				Handler:           kpapi.NewServer(tenants),
				ReadHeaderTimeout: 10 * time.Second,
				ReadTimeout:       30 * time.Second,
				WriteTimeout:      60 * time.Second,
				IdleTimeout:       120 * time.Second,
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			def, _ := tenants.Default()
			scheme := "http"
			if cert != "" {
				scheme = "https"
			}
			addr := scheme + "://" + ln.Addr().String()
			fmt.Fprintf(a.stderr, "crkvol: serving the Key Protect API v2 at %s (default instance %s)\n", addr, def)
			if addrFile != "" {
				if err := os.WriteFile(addrFile, []byte(addr+"\n"), 0o600); err != nil {
					return err
				}
			}
			// Rotation policies: run what is due now and then every 10 seconds. The loop is
			// joined before the stores close.
			dueDone := make(chan struct{})
			defer func() { stop(); <-dueDone }()
			go func() {
				defer close(dueDone)
				t := time.NewTicker(10 * time.Second)
				defer t.Stop()
				for {
					if _, err := tenants.RunDue(ctx); err != nil {
						fmt.Fprintf(a.stderr, "crkvol: kms serve: due rotations: %v\n", err)
					}
					select {
					case <-ctx.Done():
						return
					case <-t.C:
					}
				}
			}()
			errc := make(chan error, 1)
			go func() {
				if cert != "" {
					errc <- srv.ServeTLS(ln, cert, keyFile)
				} else {
					errc <- srv.Serve(ln)
				}
			}()
			select {
			case err := <-errc:
				return fmt.Errorf("kms serve: %w", err)
			case <-ctx.Done():
			}
			shutdown, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := srv.Shutdown(shutdown); err != nil {
				return fmt.Errorf("kms serve: shutting down: %w", err)
			}
			if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("kms serve: %w", err)
			}
			fmt.Fprintln(a.stderr, "crkvol: kms serve: shut down after finishing in-flight requests")
			return nil
		}}
	serve.Flags().StringVar(&listen, "listen", "127.0.0.1:8410", "address to listen on")
	serve.Flags().StringVar(&cert, "tls-cert", "", "TLS certificate file")
	serve.Flags().StringVar(&keyFile, "tls-key", "", "TLS private key file")
	serve.Flags().StringVar(&static, "static-token", "", "also accept this bearer token for every instance (tests only)")
	serve.Flags().StringVar(&addrFile, "addr-file", "", "write the serving URL to this file once listening")

	instance := group("instance", "Manage service instances")
	instance.AddCommand(&cobra.Command{Use: "create NAME", Short: "Create an instance and print its id", Args: args(cobra.ExactArgs(1)),
		RunE: func(_ *cobra.Command, args []string) error {
			tenants, err := a.tenants()
			if err != nil {
				return err
			}
			defer tenants.Close()
			id, err := tenants.CreateInstance(args[0])
			if err != nil {
				return fmt.Errorf("kms instance create: %w", err)
			}
			if a.asJSON {
				return a.emit(map[string]string{"id": id, "name": args[0]})
			}
			fmt.Fprintln(a.stdout, id)
			return nil
		}})
	var inst string
	apikey := group("apikey", "Manage API keys")
	create := &cobra.Command{Use: "create", Short: "Create an API key for an instance and print it (once)", Args: args(cobra.NoArgs),
		RunE: func(_ *cobra.Command, _ []string) error {
			tenants, err := a.tenants()
			if err != nil {
				return err
			}
			defer tenants.Close()
			if inst == "" {
				inst, _ = tenants.Default()
			}
			key, err := tenants.CreateAPIKey(inst)
			if err != nil {
				return fmt.Errorf("kms apikey create: %w", err)
			}
			if a.asJSON {
				return a.emit(map[string]string{"apikey": key, "instance": inst})
			}
			fmt.Fprintln(a.stdout, key)
			return nil
		}}
	create.Flags().StringVar(&inst, "instance", "", "instance id (default: the default instance)")
	apikey.AddCommand(create)
	k.AddCommand(serve, instance, apikey)
	return k
}

// tenants opens the state directory's instances.
func (a *app) tenants() (*kpapi.Tenants, error) {
	dir, err := a.stateDirectory()
	if err != nil {
		return nil, err
	}
	clock, err := a.clock()
	if err != nil {
		return nil, err
	}
	opts, err := a.crkOptions(clock)
	if err != nil {
		return nil, err
	}
	return kpapi.OpenTenants(dir, opts)
}
