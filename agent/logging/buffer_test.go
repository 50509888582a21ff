package logging

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// writes counts the calls that reach the underlying writer.
type writes struct {
	mu    sync.Mutex
	calls int
	out   bytes.Buffer
}

func (w *writes) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls++
	return w.out.Write(p)
}

func (w *writes) get() (int, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.calls, w.out.String()
}

func TestBufferWritesLinesTogetherWithinFlushEvery(t *testing.T) {
	w := &writes{}
	b := NewBuffer(w)
	for i := range 100 {
		b.Write([]byte(strings.Repeat("x", i%7) + "\n"))
	}
	if calls, _ := w.get(); calls != 0 {
		t.Fatalf("%d writes before FlushEvery, want the lines held", calls)
	}
	deadline := time.Now().Add(10 * FlushEvery)
	for {
		calls, out := w.get()
		if calls == 1 && strings.Count(out, "\n") == 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %d writes holding %d lines, want 1 write of 100", 10*FlushEvery, calls, strings.Count(out, "\n"))
		}
		time.Sleep(FlushEvery / 5)
	}
}

func TestBufferWritesAtOnceWhenFull(t *testing.T) {
	w := &writes{}
	b := NewBuffer(w)
	line := []byte(strings.Repeat("y", 1023) + "\n")
	for range BufferBytes / len(line) {
		b.Write(line)
	}
	if calls, out := w.get(); calls != 1 || len(out) != BufferBytes {
		t.Fatalf("%d writes of %d bytes once %d bytes were held, want 1", calls, len(out), BufferBytes)
	}
	b.Write([]byte("last\n"))
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if calls, out := w.get(); calls != 2 || !strings.HasSuffix(out, "last\n") {
		t.Fatalf("%d writes, ending %q: Flush must write what is held", calls, out[len(out)-10:])
	}
}
