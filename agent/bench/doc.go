// Package bench measures warren end to end against a hand-tuned bare bridge
// on the real broker: backlog drain rate, CPU per message, peak RSS,
// publish-to-receive latency at a steady rate, the move to a retry tier and
// the connections opened to the endpoint. It holds benchmarks only (see
// README.md); `make bench` runs them.
package bench
