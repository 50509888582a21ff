package logging

import (
	"io"
	"sync"
	"time"
)

// Buffer holds log lines for up to FlushEvery (or until BufferBytes
// gather) and writes them in one call: a busy agent logs a line per
// delivery, and a write(2) per line cost it more than the line itself.
// Flush writes what is held; the process flushes before it exits, so only
// a crash that kills it outright (SIGKILL, OOM) can lose the last
// FlushEvery of lines.
type Buffer struct {
	w     io.Writer
	mu    sync.Mutex
	buf   []byte
	timer *time.Timer
	armed bool
}

// Limits of a Buffer.
const (
	FlushEvery  = 50 * time.Millisecond
	BufferBytes = 64 << 10
)

// NewBuffer returns a Buffer writing to w.
func NewBuffer(w io.Writer) *Buffer {
	b := &Buffer{w: w}
	b.timer = time.AfterFunc(time.Hour, func() { _ = b.Flush() })
	b.timer.Stop()
	return b
}

// Write holds p (a log handler writes one whole line per call) and
// writes what is held once it reaches BufferBytes.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) >= BufferBytes {
		return len(p), b.flushLocked()
	}
	if !b.armed {
		b.armed = true
		b.timer.Reset(FlushEvery)
	}
	return len(p), nil
}

// Flush writes every line held.
func (b *Buffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *Buffer) flushLocked() error {
	b.armed = false
	b.timer.Stop()
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	if cap(b.buf) > 4*BufferBytes {
		b.buf = nil // one burst of huge lines: do not keep its memory
	} else {
		b.buf = b.buf[:0]
	}
	return err
}
