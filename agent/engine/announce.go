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

// OperatorEvent is the JSON body of an operator event. It carries statuses
// and warren's own reasons, never an endpoint's response body: a
// subscription on warren.# would forward one partner's answer to another.
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
func (env *env) announce(key string, ev OperatorEvent) {
	cfg, _ := env.e.current()
	if !cfg.Broker.OperatorEvents || strings.HasPrefix(ev.Type, "warren.") {
		// Off, or about an operator event itself: never announce the
		// parking of an announcement, which could loop.
		return
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(env.hard, 5*time.Second)
	defer cancel()
	err = env.copies.publish(ctx, cfg.Broker.Exchange, key, amqp.Publishing{
		MessageId:   key + ":" + ev.Subscription + ":" + ev.EventID + ":" + strconv.FormatInt(ev.At.UnixNano(), 10),
		ContentType: "application/json",
		Timestamp:   ev.At,
		Body:        body,
	})
	if err != nil {
		// Unroutable simply means no application consumes these yet.
		env.e.log.Debug("operator event not stored", "key", key, logging.Err(err))
	}
}
