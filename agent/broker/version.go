package broker

import (
	"fmt"
	"strconv"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// RequireStreams fails unless the broker behind conn can hold streams,
// which RabbitMQ has since 3.9. It reads the version the server announces
// on connecting; a server that announces none is let through, and any
// problem then shows when the stream is declared.
func RequireStreams(conn *amqp.Connection) error {
	version, _ := conn.Properties["version"].(string)
	if major, minor, ok := parseVersion(version); ok && (major < 3 || major == 3 && minor < 9) {
		return fmt.Errorf("broker.journal needs RabbitMQ 3.9 or later for streams, the broker runs %s: upgrade it or remove broker.journal", version)
	}
	return nil
}

// parseVersion reads "3.10.8" or "4.0.0-beta.1".
func parseVersion(v string) (major, minor int, ok bool) {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return major, minor, err1 == nil && err2 == nil
}
