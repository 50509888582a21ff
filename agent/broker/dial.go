// Package broker holds warren's AMQP plumbing: dialing named connections and
// publishing with confirms.
package broker

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/config"
)

// DialTimeout bounds the TCP and AMQP handshake of one dial.
const DialTimeout = 10 * time.Second

// Dial opens a connection named "warren <role> <host>" so operators can
// tell warren's connections apart in rabbitmqctl list_connections.
func Dial(b config.Broker, role string) (*amqp.Connection, error) {
	host, _ := os.Hostname()
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(fmt.Sprintf("warren %s %s", role, host))
	cfg := amqp.Config{
		Properties: props,
		Heartbeat:  10 * time.Second,
		Locale:     "en_US",
		Dial: func(network, addr string) (net.Conn, error) {
			return net.DialTimeout(network, addr, DialTimeout)
		},
	}
	tlsCfg, err := tlsConfig(b.TLS)
	if err != nil {
		return nil, err
	}
	cfg.TLSClientConfig = tlsCfg
	conn, err := amqp.DialConfig(b.URL, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", b.RedactedURL(), err)
	}
	return conn, nil
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
