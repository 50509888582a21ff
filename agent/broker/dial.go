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
// Cancelling ctx ends a dial in progress at once.
func Dial(ctx context.Context, b config.Broker, role string) (*amqp.Connection, error) {
	conn, err := dialNode(ctx, b, b.URL, role)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", config.RedactURL(b.URL), err)
	}
	return conn, nil
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
			deadline, _ := ctx.Deadline()
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
	return conn, err
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
		return fmt.Errorf("no answer within %s", handshakeTimeout)
	}
	return ctx.Err()
}

// tlsConfig is used only for amqps:// URLs; nil means the system defaults.
func tlsConfig(t config.TLS) (*tls.Config, error) {
	if t == (config.TLS{}) {
		return nil, nil
	}
	c := &tls.Config{ServerName: t.ServerName, MinVersion: tls.VersionTLS12}
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
