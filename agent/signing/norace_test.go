//go:build !race

// The race detector makes sync.Pool drop items at random, so allocation
// counts only mean something without it.

package signing

import (
	"testing"
	"time"
)

// TestSignerAllocations pins the point of Signer: the header string is its
// only allocation.
func TestSignerAllocations(t *testing.T) {
	s := NewSigner([][]byte{vectorKey(t), []byte("second")})
	ts := time.Unix(vectorTimestamp, 0)
	body := []byte(vectorBody)
	s.Sign(vectorID, ts, body) // fill the pool
	if n := testing.AllocsPerRun(100, func() { s.Sign(vectorID, ts, body) }); n > 1 {
		t.Errorf("Signer.Sign allocates %v times, want at most 1", n)
	}
}
