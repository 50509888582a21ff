package brokertest

import (
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy forwards TCP connections on 127.0.0.1 to the test broker, playing
// a node that dies (Cut) or one that stops answering (Stall). It counts
// the connections it accepted.
type Proxy struct {
	Addr     string
	Accepted atomic.Int32

	stalled atomic.Bool
	done    chan struct{}
	mu      sync.Mutex
	conns   []net.Conn
}

// NewProxy starts a proxy to the broker of Dial; the test's end closes it.
func NewProxy(t testing.TB) *Proxy {
	t.Helper()
	target := Dial(t).RemoteAddr().String()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), done: make(chan struct{})}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.Accepted.Add(1)
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go p.pipe(up, c)
			go p.pipe(c, up)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		close(p.done)
		p.Cut()
	})
	return p
}

// pipe copies src to dst until either fails; once stalled it passes
// nothing more and keeps both open until the test ends.
func (p *Proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.stalled.Load() {
			<-p.done
			return
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// Cut closes every connection, as a node dying would.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Stall keeps every connection open and passes nothing more either way: a
// broker that stopped answering.
func (p *Proxy) Stall() { p.stalled.Store(true) }

// URLAt is the test broker's URL with its host and port replaced by addr.
func URLAt(t testing.TB, addr string) string {
	t.Helper()
	u, err := url.Parse(URL())
	if err != nil {
		t.Fatal(err)
	}
	u.Host = addr
	return u.String()
}
