package broker

import (
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestRequireStreams(t *testing.T) {
	for version, ok := range map[string]bool{
		"3.10.8": true, "3.9.0": true, "4.0.0-beta.1": true, "3.13": true, "": true, "unknown": true,
		"3.8.35": false, "2.8.7": false,
	} {
		conn := &amqp.Connection{Properties: amqp.Table{"version": version}}
		err := RequireStreams(conn)
		if ok != (err == nil) {
			t.Errorf("RequireStreams(%q) = %v, want ok=%v", version, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), version) {
			t.Errorf("error %q does not name the version %q", err, version)
		}
	}
}
