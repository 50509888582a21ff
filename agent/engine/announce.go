package engine

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/warren-hq/warren/agent/logging"
)

// Routing keys of the operator events warren publishes to the exchange when
// broker.operator_events is on.
const (
	KeyParked  = "warren.delivery.parked"
	KeyPaused  = "warren.subscription.paused"
	KeyResumed = "warren.subscription.resumed"
)

// OperatorEvent is the JSON body of an operator event.
type OperatorEvent struct {
	Subscription string    `json:"subscription"`
	EventID      string    `json:"event_id,omitempty"`
	Type         string    `json:"type,omitempty"`
	Attempts     int       `json:"attempts,omitempty"`
	LastStatus   int       `json:"last_status,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	At           time.Time `json:"at"`
}

// announce publishes an operator event, confirmed but best effort: the
// outcome it reports is already settled, so a failure is only logged.
func (sess *session) announce(key string, ev OperatorEvent) {
	if sess.operatorExchange == "" || strings.HasPrefix(ev.Type, "warren.") {
		// Off, or about an operator event itself: never announce the
		// parking of an announcement, which could loop.
		return
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = sess.publisher.Publish(ctx, sess.operatorExchange, key, amqp.Publishing{
		MessageId:   key + ":" + ev.Subscription + ":" + ev.EventID + ":" + strconv.FormatInt(ev.At.UnixNano(), 10),
		ContentType: "application/json",
		Timestamp:   ev.At,
		Body:        body,
	})
	if err != nil {
		// Unroutable simply means no application consumes these yet.
		sess.log.Debug("operator event not stored", "key", key, logging.Err(err))
	}
}
