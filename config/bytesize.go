package config

import (
	"errors"
	"math"
	"strconv"
	"strings"
)

// ByteSize is a size in bytes, written in YAML as bytes (1048576) or as a
// whole number with a unit: KB, MB, GB, TB are powers of 1000, KiB, MiB,
// GiB, TiB powers of 1024.
type ByteSize int64

// AutoSize is the size written "auto": warren chooses (server.memory_limit
// reads the container's limit).
const AutoSize ByteSize = -1

// Size units.
const (
	KiB ByteSize = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
)

// byteUnits lists every unit ParseByteSize reads, IEC first so String
// prefers them when two units print equally short.
var byteUnits = []struct {
	name string
	size ByteSize
}{
	{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3},
	{"B", 1},
}

var errByteSize = errors.New("want bytes or a whole number with a unit such as 512KiB, 1MiB, 300MB or 10GB")

// ParseByteSize reads "1048576", "512KiB", "300MB" or "10 GB". Units are
// case-sensitive: "10Gb" is not ten gigabytes.
func ParseByteSize(s string) (ByteSize, error) {
	if s == "auto" {
		return AutoSize, nil
	}
	digits := strings.TrimRight(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
	unit := strings.TrimSpace(s[len(digits):])
	digits = strings.TrimSpace(digits)
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n < 0 || digits[0] == '+' {
		return 0, errByteSize
	}
	if unit == "" {
		return ByteSize(n), nil
	}
	for _, u := range byteUnits {
		if u.name == unit {
			if n > math.MaxInt64/int64(u.size) {
				return 0, errors.New("too large (want at most 8EiB)")
			}
			return ByteSize(n) * u.size, nil
		}
	}
	return 0, errByteSize
}

// String writes the size exactly, in the largest unit that divides it,
// preferring IEC units: 1MiB, 10GB, 1536B. ParseByteSize reads it back.
func (b ByteSize) String() string {
	switch b {
	case 0:
		return "0B"
	case AutoSize:
		return "auto"
	}
	best := byteUnits[len(byteUnits)-1]
	for _, u := range byteUnits {
		if b%u.size == 0 && (best.size == 1 || u.size > best.size) {
			best = u
		}
	}
	return strconv.FormatInt(int64(b/best.size), 10) + best.name
}
