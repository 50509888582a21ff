package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/warren-hq/warren/agent/event"
	"github.com/warren-hq/warren/agent/signing"
)

func (a *app) listenCommand() *cobra.Command {
	var (
		addr    string
		secrets []string
		status  int
	)
	cmd := &cobra.Command{
		Use:   "listen",
		Short: "Development receiver: verify signatures, print each event, answer --status",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if status < 100 || status > 599 {
				return usagef("--status must be an HTTP status code, got %d", status)
			}
			var keys [][]byte
			for _, s := range secrets {
				k, err := signing.DecodeSecret(s)
				if err != nil {
					return usagef("--secret: %v", err)
				}
				keys = append(keys, k)
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			srv := &http.Server{
				Handler:           receiver{keys: keys, status: status, out: a.env.Stdout},
				ReadHeaderTimeout: 10 * time.Second,
			}
			fmt.Fprintf(a.env.Stdout, "listening on http://%s/ (answering %d, signatures %s)\n", ln.Addr(), status, verifyMode(keys))
			return serveUntil(cmd.Context(), srv, ln)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:8080", "address to listen on")
	cmd.Flags().StringArrayVar(&secrets, "secret", nil, "whsec_ secret to verify signatures with (repeatable)")
	cmd.Flags().IntVar(&status, "status", http.StatusOK, "status to answer every request with")
	return cmd
}

func verifyMode(keys [][]byte) string {
	if len(keys) == 0 {
		return "not checked (no --secret)"
	}
	return "verified"
}

// serveUntil serves until ctx ends, then shuts the server down gracefully.
func serveUntil(ctx context.Context, srv *http.Server, ln net.Listener) error {
	var wg sync.WaitGroup
	wg.Go(func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	})
	err := srv.Serve(ln)
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// receiver prints one line per webhook: id, type, signature check, body.
type receiver struct {
	keys   [][]byte
	status int
	out    io.Writer
}

func (rc receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	id := r.Header.Get("webhook-id")
	verdict := "unsigned"
	if len(rc.keys) > 0 {
		verdict = "signature ok"
		err := signing.Verify(rc.keys, id, r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), body, time.Now(), 5*time.Minute)
		if err != nil {
			verdict = "signature INVALID: " + err.Error()
			fmt.Fprintf(rc.out, "%s %s %s\n", time.Now().Format(time.TimeOnly), id, verdict)
			http.Error(w, verdict, http.StatusUnauthorized)
			return
		}
	}
	kind := r.Header.Get("ce-type")
	if kind == "" {
		kind = r.Header.Get("content-type")
	}
	fmt.Fprintf(rc.out, "%s %s %s [%s] -> %s %s\n", time.Now().Format(time.TimeOnly), id, kind, verdict,
		strconv.Itoa(rc.status), event.Truncate(strings.TrimSpace(string(body)), 300))
	w.WriteHeader(rc.status)
}
