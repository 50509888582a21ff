// Package journal reads warren's two RabbitMQ streams, P.journal (every
// event published to the exchange) and P.attempts (every delivery
// attempt's outcome), by time window; replays a window's events into a
// subscription's work queue; and records attempts into P.attempts.
//
// The broker keeps both streams for broker.journal's max_age and max_bytes;
// there is no other store.
package journal
