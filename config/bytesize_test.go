package config

import "testing"

func TestParseByteSize(t *testing.T) {
	good := map[string]ByteSize{
		"0": 0, "1048576": MiB, "512KiB": 512 * KiB, "1MiB": MiB, "300MB": 300e6,
		"10GB": 10e9, "10 GB": 10e9, "2TiB": 2 * TiB, "7B": 7, "1KB": 1000,
	}
	for s, want := range good {
		got, err := ParseByteSize(s)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", s, got, err, want)
		}
		back, err := ParseByteSize(got.String())
		if err != nil || back != got {
			t.Errorf("ParseByteSize(%q.String() = %q) = %d, %v; want %d", s, got.String(), back, err, got)
		}
	}
	for _, s := range []string{"", "GB", "-1", "+5", "1.5GiB", "10Gb", "10gb", "10 G", "1 0MB", "9999999TiB", "0x10"} {
		if got, err := ParseByteSize(s); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want an error", s, got)
		}
	}
}

func TestByteSizeString(t *testing.T) {
	for b, want := range map[ByteSize]string{
		0: "0B", 1: "1B", 1536: "1536B", KiB: "1KiB", 1000: "1KB", MiB: "1MiB",
		10e9: "10GB", 3 * GiB: "3GiB", 2048 * GiB: "2TiB", 500e6: "500MB",
	} {
		if got := b.String(); got != want {
			t.Errorf("ByteSize(%d).String() = %q, want %q", int64(b), got, want)
		}
	}
}
