// Package broker holds warren's AMQP plumbing: dialing named connections and
// publishing with confirms.
package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/config"
)

// Timings of one dial, variables so tests can shorten them.
var (
	// connectTimeout bounds the TCP connect to one node.
	connectTimeout = 3 * time.Second
	// handshakeTimeout bounds the whole dial to one node, TLS and AMQP
	// handshake included: a peer that accepts TCP and never answers would
	// otherwise hang the dial forever.
	handshakeTimeout = 10 * time.Second
)

// Dial opens a connection named "warren <role> <host>" so operators can
// tell warren's connections apart in rabbitmqctl list_connections.
//
// With several broker nodes (broker.urls) it tries them in order, starting
// after the node that failed last, each within the dial deadline, and
// returns the first connection that opens: a lost node costs one refused
// or timed-out connect, not a wait for it to come back. A connection that
// later closes with an error counts as a failure of its node. Cancelling
// ctx ends a dial in progress at once.
func Dial(ctx context.Context, b config.Broker, role string) (*amqp.Connection, error) {
	nodes := b.Nodes()
	r := ringOf(nodes)
	start := r.first()
	var errs nodeErrors
	for i := range nodes {
		n := (start + i) % len(nodes)
		conn, err := dialNode(ctx, b, nodes[n], role)
		if err == nil {
			r.watch(conn, n)
			return conn, nil
		}
		err = fmt.Errorf("connect to %s: %w", config.RedactURL(nodes[n]), err)
		if ctx.Err() != nil {
			return nil, err
		}
		r.failed(n)
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, errs
}

// nodeErrors are the failed dials of every node, on one line for the log.
type nodeErrors []error

func (e nodeErrors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return "no broker node answered: " + strings.Join(msgs, "; ")
}

func (e nodeErrors) Unwrap() []error { return e }

// rings holds, per list of nodes, where the next dial starts. Connections
// of one process to one cluster share it, so the consuming and publishing
// connections move off a lost node together.
var rings sync.Map // strings.Join(nodes, "\n") -> *ring

func ringOf(nodes []string) *ring {
	key := strings.Join(nodes, "\n")
	if r, ok := rings.Load(key); ok {
		return r.(*ring)
	}
	r, _ := rings.LoadOrStore(key, &ring{size: len(nodes)})
	return r.(*ring)
}

// ring is the failover order over a cluster's nodes.
type ring struct {
	size int
	mu   sync.Mutex
	next int // the node after the one that failed last
}

func (r *ring) first() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.next
}

func (r *ring) failed(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next = (n + 1) % r.size
}

// watch marks node n failed if conn closes with an error (the node died or
// cut it off), so the redial that follows starts elsewhere. A connection
// warren closes itself closes without one.
func (r *ring) watch(conn *amqp.Connection, n int) {
	if r.size == 1 {
		return
	}
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	go func() {
		if err := <-closed; err != nil {
			r.failed(n)
		}
	}()
}

// dialNode dials one broker address within handshakeTimeout.
func dialNode(ctx context.Context, b config.Broker, url, role string) (*amqp.Connection, error) {
	host, _ := os.Hostname()
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(fmt.Sprintf("warren %s %s", role, host))
	tlsCfg, err := tlsConfig(b.TLS)
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var sock socket
	cfg := amqp.Config{
		Properties: props,
		Heartbeat:  10 * time.Second,
		Locale:     "en_US",
		// amqp091 reuses the config's TLS settings and writes the host
		// into them: each node gets its own copy.
		TLSClientConfig: tlsCfg,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: connectTimeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The deadline covers TLS and the AMQP handshake; amqp091
			// clears it once the connection is open, as DefaultDial does.
			if err := c.SetDeadline(deadline); err != nil {
				c.Close()
				return nil, err
			}
			if !sock.hold(c) {
				return nil, ctx.Err()
			}
			return c, nil
		},
	}
	// A cancelled ctx closes the socket, which ends the handshake at once.
	stop := context.AfterFunc(ctx, sock.cut)
	conn, err := amqp.DialConfig(url, cfg)
	if !stop() {
		// ctx ended first: whatever DialConfig returned, the socket is gone.
		if conn != nil {
			conn.Close()
		}
		return nil, dialCtxErr(ctx)
	}
	if err != nil && !time.Now().Before(deadline) {
		// The socket's deadline, which amqp091 reports as a bare i/o error.
		return nil, errNoAnswer()
	}
	return conn, err
}

func errNoAnswer() error {
	return fmt.Errorf("no answer within %s", handshakeTimeout)
}

// socket lets a cancelled dial close the connection it opened, whichever
// comes first: the connection or the cancellation.
type socket struct {
	mu   sync.Mutex
	conn net.Conn
	done bool // cut: any connection is closed at once
}

// hold keeps c to close on cut; false means the dial was cut already and c
// is closed.
func (s *socket) hold(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		c.Close()
		return false
	}
	s.conn = c
	return true
}

func (s *socket) cut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done = true
	if s.conn != nil {
		s.conn.Close()
	}
}

// dialCtxErr says why a dial was cut short.
func dialCtxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return errNoAnswer()
	}
	return ctx.Err()
}

// tlsConfig is used only for amqps:// URLs; nil means the system defaults.
func tlsConfig(t config.TLS) (*tls.Config, error) {
	if t == (config.TLS{}) {
		return nil, nil
	}
	c := &tls.Config{ServerName: t.ServerName, MinVersion: t.Version()}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("broker.tls.ca_file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("broker.tls.ca_file: no PEM certificate in %s", t.CAFile)
		}
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("broker.tls: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
