package journal

import (
	"fmt"
	"strings"
	"time"
)

// Window is a span of journal time: when the broker wrote the message into
// the stream, to the second. A zero Since is the stream's start, a zero
// Until its end as it was when reading began.
type Window struct {
	Since, Until time.Time
}

// ParseTime reads a command-line time: a duration back from now ("2h",
// "90m") or an RFC 3339 time ("2026-01-02T15:04:05Z").
func ParseTime(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("invalid time %q: want a positive duration back from now such as 2h", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		if strings.ContainsAny(s, "-:T") {
			return time.Time{}, fmt.Errorf("invalid time %q: want RFC 3339 such as 2026-01-02T15:04:05Z", s)
		}
		return time.Time{}, fmt.Errorf("invalid time %q: want a duration back from now such as 2h, or an RFC 3339 time", s)
	}
	return t, nil
}
