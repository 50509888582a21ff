package delivery

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/warren-hq/warren/config"
)

// Transport settings shared by every endpoint.
const (
	// idleTimeout closes a keep-alive connection nobody used for this long:
	// an idle subscription keeps no connections (SPEC §10).
	idleTimeout = 20 * time.Second
	// maxConnsPerHost is above the largest concurrency, so that
	// connections an endpoint's workers use are kept between attempts, not
	// reopened; and it bounds the connections opened at once to one host:
	// one event fanned out to thousands of subscriptions on one host would
	// otherwise dial thousands of connections together, overflow the
	// host's accept queue and wait out the kernel's SYN retries (1, 3, 7 s
	// and more).
	maxConnsPerHost = 1024
	// maxResponseHeaderBytes bounds what an endpoint can make warren read
	// before the body.
	maxResponseHeaderBytes = 64 << 10
)

// transportKey is what decides whether two subscriptions can share
// connections: the same scheme, host and port, TLS settings and proxy.
type transportKey struct {
	scheme, host string
	tls          config.TLS
	proxy        string
}

type sharedTransport struct {
	key  transportKey
	tr   *http.Transport
	refs int
}

// transports holds one transport per key while any client uses it.
var transports = struct {
	sync.Mutex
	m map[transportKey]*sharedTransport
}{m: map[transportKey]*sharedTransport{}}

// acquire returns the shared transport for s's endpoint, creating it on
// first use.
//
// Each subscription caps its own requests in flight at its concurrency;
// the transport caps connections to one host at maxConnsPerHost, which
// only subscriptions sharing a host with more than that many requests in
// flight together ever wait for. idleTimeout drops connections when the
// traffic stops.
func acquire(s config.Subscription) (*sharedTransport, error) {
	u, err := url.Parse(s.URL)
	if err != nil {
		return nil, err
	}
	key := transportKey{scheme: u.Scheme, host: strings.ToLower(u.Host), proxy: s.Proxy}
	if u.Scheme == "https" {
		key.tls = s.TLS
		if key.tls.MinVersion == "" {
			key.tls.MinVersion = config.TLS12 // the same transport as written out
		}
	}
	transports.Lock()
	defer transports.Unlock()
	if st, ok := transports.m[key]; ok {
		st.refs++
		return st, nil
	}
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		// The attempt's context bounds dial, TLS handshake and answer.
		DialContext:            (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConnsPerHost:    maxConnsPerHost,
		MaxConnsPerHost:        maxConnsPerHost,
		IdleConnTimeout:        idleTimeout,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		ExpectContinueTimeout:  time.Second,
	}
	if s.Proxy != "" {
		// Written proxies are used as they are: NO_PROXY is for the
		// environment's.
		pu, err := url.Parse(s.Proxy)
		if err != nil {
			return nil, errors.New("invalid proxy URL") // the URL may hold a password
		}
		tr.Proxy = http.ProxyURL(pu)
	}
	if key.tls != (config.TLS{}) {
		if tr.TLSClientConfig, err = clientTLS(key.tls); err != nil {
			return nil, err
		}
	}
	st := &sharedTransport{key: key, tr: tr, refs: 1}
	transports.m[key] = st
	return st, nil
}

func release(st *sharedTransport) {
	transports.Lock()
	defer transports.Unlock()
	if st.refs--; st.refs == 0 {
		delete(transports.m, st.key)
		st.tr.CloseIdleConnections()
	}
}

// clientTLS builds the TLS settings of an https:// endpoint: its CA (else
// the system's), a client certificate for mutual TLS, a server name, the
// oldest TLS version.
func clientTLS(t config.TLS) (*tls.Config, error) {
	c := &tls.Config{MinVersion: t.Version(), ServerName: t.ServerName}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: read ca_file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, errors.New("tls: ca_file holds no PEM certificate")
		}
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls: load cert_file and key_file: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
