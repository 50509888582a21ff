// Package clustertest holds make cluster-test: two warren processes, run as
// black boxes from the built binary, deliver a steady stream of events
// through a three-node RabbitMQ cluster with quorum queues while a node
// leader, the node a warren is connected to and a warren process are each
// killed with kill -9. It checks that every event was delivered or parked
// and reports duplicates and the longest gap in deliveries.
//
// .ci/cluster-test.sh starts the cluster and runs the test; without it the
// test skips, so go test ./... does not run it.
package clustertest
